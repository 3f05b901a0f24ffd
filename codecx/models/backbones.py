"""CompressAI image codecs split into the explicit stages codecx composes (DESIGN.md).

Each backbone *is* the CompressAI class of the same architecture (same module names, so a
state dict saved from `compressai.zoo` loads unchanged and `update()` / `aux_loss()` are
CompressAI's), plus three stage methods that the walk's channels (:mod:`codecx.quantizers.channels`) call:
`side_prior(like)` (the factorized prior of z as entropy parameters), `params(hyper, like, ctx)`
(the prior's means and scales) and, for context models, `context(y_hat)`.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.google import get_scale_table
from torch import Tensor, nn

from codecx.types import EntropyParams

#: top-level submodule name -> parameter group (training stages, `schedule.stages`)
_GROUP_OF = {"g_a": "g_a", "h_a": "h_a", "h_s": "h_s", "g_s": "g_s", "entropy_bottleneck": "entropy",
             "gaussian_conditional": "entropy", "context_prediction": "context",
             "entropy_parameters": "context"}


#: scale-table levels of the Gaussian CDF tables (log-spaced 0.11 ... 256). CompressAI's 64
#: round scales up by up to 9.3%, which cost ~3% of the y bits over the likelihood estimate
#: on a small Kodak model; 256 levels (3.1% steps) ~0.8%. 64 gives CompressAI's bitstreams.
SCALE_LEVELS = 256


def bottleneck_density(eb, v: Tensor) -> Tensor:
    """The unit-bin mass of `v` (B, C, ...) under CompressAI's `EntropyBottleneck` `eb` (before
    its likelihood bound), whose density works channel-first: (C, 1, -1)."""
    perm = (1, 0, *range(2, v.dim()))
    vc = v.permute(*perm).contiguous()
    lik, _, _ = eb._likelihood(vc.reshape(vc.size(0), 1, -1))
    return lik.reshape(vc.shape).permute(*perm).contiguous()


class Backbone:
    """Stage interface shared by all backbones (a mixin over a CompressAI model).

    A config node `_target_: codecx.models.backbones.MbtMean` (with `name`, `N`, `M`,
    `weights`, `scale_levels`) builds one; `weights` loads a CompressAI / codecx state dict.
    """

    #: entropy-model family: "factorized", "hyperprior" (scale or mean-scale) or "context"
    family: str = "hyperprior"
    #: True when (means, scales) depend on already decoded latents (serial decoding)
    autoregressive: bool = False
    #: False for the factorized prior: no z, no hyper analysis / synthesis
    has_side: bool = True
    #: g_a's downsampling (y is `latent_stride` times smaller than the padded image)
    latent_stride: int = 16
    #: levels of the scale table `update()` builds the Gaussian CDF tables for
    scale_levels: int = SCALE_LEVELS

    def __init__(self, N: int = 128, M: Optional[int] = 192, weights: Optional[str] = None,
                 scale_levels: int = SCALE_LEVELS, name: Optional[str] = None):
        if int(scale_levels) < 2:
            raise ValueError(f"model.scale_levels={scale_levels}: need at least 2 (CompressAI: 64)")
        super().__init__(**self._arch_kwargs(N, M))
        self.scale_levels = int(scale_levels)
        if weights:
            from codecx.models.weights import load_weights

            load_weights(self, weights)

    @staticmethod
    def _arch_kwargs(N, M) -> dict:
        """The CompressAI constructor's arguments."""
        if M is None:
            raise ValueError("model.M=null: this backbone needs a latent width M (e.g. 192)")
        return {"N": int(N), "M": int(M)}

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """CompressAI's `update` (CDF tables of every entropy model), with a scale table of
        `scale_levels` levels unless one is given."""
        if scale_table is None:
            scale_table = get_scale_table(levels=self.scale_levels)
        return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)

    @property
    def stride(self) -> int:
        """Input sizes must be multiples of this (padding is added otherwise)."""
        return int(self.downsampling_factor)

    def latent_shapes(self, h: int, w: int):
        """(y, z) spatial sizes for an `h` x `w` image (z: None without side information): the
        image is padded to a multiple of `stride`, g_a downsamples by `latent_stride`, h_a by
        `stride / latent_stride` more; e.g. a hyperprior (stride 64): 33x70 -> y 4x8, z 1x2."""
        s, ls = int(self.stride), int(self.latent_stride)
        ph, pw = int(h) + (-int(h)) % s, int(w) + (-int(w)) % s
        y = (ph // ls, pw // ls)
        return (y, (ph // s, pw // s)) if self.has_side else (y, None)

    def h_a_input(self, y: Tensor) -> Tensor:
        """What the hyper analysis sees of `y`."""
        return y

    _h_a_input = h_a_input

    def side_from_z_hat(self, z_hat: Tensor) -> Tensor:
        return self.h_s(z_hat)

    def side_prior(self, like: Tensor) -> EntropyParams:
        """The entropy bottleneck's factorized prior (Ballé et al. 2018, arXiv 1802.01436) as
        entropy parameters of a tensor shaped `like` (the side latent z; the factorized
        backbone's y): its per-channel medians, the grid it codes on, broadcast to `like`,
        and its density (`bottleneck_density`)."""
        eb = self.entropy_bottleneck
        medians = eb._get_medians().detach().reshape(1, -1, *([1] * (like.dim() - 2))).to(like)
        return EntropyParams(medians.expand_as(like), None, eb, functools.partial(bottleneck_density, eb))

    @property
    def y_entropy_model(self):
        """The CompressAI entropy model whose CDF tables code `y`."""
        return self.gaussian_conditional

    def y_like(self, hyper: Optional[Tensor], shape) -> Tensor:
        """A tensor of y's shape (only its shape, dtype and device are used)."""
        return hyper.new_zeros(shape)

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Named parameter groups for training stages: g_a, h_a, h_s, entropy, context, g_s
        (a submodule outside these names forms a group of its own name)."""
        groups: Dict[str, List[nn.Parameter]] = {k: [] for k in ("g_a", "h_a", "h_s", "entropy", "context", "g_s")}
        for name, p in self.named_parameters():
            top = name.split(".", 1)[0]
            group = _GROUP_OF.get(top, top)
            groups.setdefault(group, []).append(p)
        return groups

    def params(self, hyper: Tensor, like: Tensor, ctx: Optional[Tensor] = None) -> EntropyParams:
        scales, means = hyper.chunk(2, 1)
        return EntropyParams(means, scales, self.gaussian_conditional)


class BmshjFactorized(Backbone, FactorizedPrior):
    """Factorized prior of Ballé, Laparra, Simoncelli, "End-to-end optimized image compression" (ICLR 2017) /
    bmshj2018-factorized."""

    family = "factorized"
    has_side = False

    @property
    def y_entropy_model(self):
        return self.entropy_bottleneck

    def y_like(self, hyper, shape):
        return self.entropy_bottleneck._get_medians().new_zeros(shape)

    @property
    def downsampling_factor(self) -> int:
        return 16

    def side(self, y):
        return None, None, None

    def params(self, hyper, like, ctx=None):
        """y is coded under the bottleneck's factorized prior, as a hyperprior's z."""
        return self.side_prior(like)


class BmshjHyperprior(Backbone, ScaleHyperprior):
    """Scale hyperprior of Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018)."""

    def h_a_input(self, y):
        return torch.abs(y)

    _h_a_input = h_a_input

    def params(self, hyper, like, ctx=None):
        return EntropyParams(torch.zeros_like(hyper), hyper, self.gaussian_conditional)


class MbtMean(Backbone, MeanScaleHyperprior):
    """Mean-scale hyperprior of Minnen, Ballé, Toderici, "Joint autoregressive and hierarchical priors"
    (NeurIPS 2018)."""


class _ContextBackbone(Backbone):
    """Hyperprior plus a 5x5 masked-convolution spatial context (serial decoding)."""

    family = "context"
    autoregressive = True
    kernel_size = 5

    def context(self, y_hat: Tensor) -> Tensor:
        return self.context_prediction(y_hat)

    def serial(self, hyper: Tensor, step: Callable, shape) -> Tuple[Tensor, EntropyParams]:
        """Visit latent positions in raster order, as the decoder must (mbt2018, cheng2020).

        `step(params, index)` returns `y_hat[index]` (shape (B, C)) for the prior `params`
        at that position (hard quantization, encoding or decoding of its symbols). Returns the
        full `y_hat` and the full prior.
        """
        k = self.kernel_size
        pad = (k - 1) // 2
        b, c, height, width = shape
        y_hat = hyper.new_zeros((b, c, height + 2 * pad, width + 2 * pad))
        means = hyper.new_zeros((b, c, height, width))
        scales = hyper.new_zeros((b, c, height, width))
        cp = self.context_prediction
        weight = cp.weight * cp.mask
        for h in range(height):
            for w in range(width):
                crop = y_hat[:, :, h : h + k, w : w + k]
                ctx = F.conv2d(crop, weight, bias=cp.bias)
                p = self.params(hyper[:, :, h : h + 1, w : w + 1], like=None, ctx=ctx)
                p = p[:, :, 0, 0]
                y_hat[:, :, h + pad, w + pad] = step(p, (slice(None), slice(None), h, w))
                means[:, :, h, w] = p.means
                scales[:, :, h, w] = p.scales
        y_hat = y_hat[:, :, pad : pad + height, pad : pad + width]
        return y_hat, EntropyParams(means, scales, self.gaussian_conditional)

    def params(self, hyper, like, ctx=None):
        gaussian_params = self.entropy_parameters(torch.cat((hyper, ctx), dim=1))
        scales, means = gaussian_params.chunk(2, 1)
        return EntropyParams(means, scales, self.gaussian_conditional)


class Mbt(_ContextBackbone, JointAutoregressiveHierarchicalPriors):
    """Joint autoregressive and hierarchical priors of Minnen, Ballé, Toderici (NeurIPS 2018), mbt2018."""


class ChengAnchor(_ContextBackbone, Cheng2020Anchor):
    """Cheng et al., "Learned image compression with discretized Gaussian mixture likelihoods and attention
    modules" (CVPR 2020), anchor with a single Gaussian."""

    @staticmethod
    def _arch_kwargs(N, M):
        _check_cheng_m(N, M)
        return {"N": int(N)}


class ChengAttn(_ContextBackbone, Cheng2020Attention):
    """Cheng et al. (CVPR 2020) with simplified attention modules, single Gaussian (cheng2020-attn)."""

    @staticmethod
    def _arch_kwargs(N, M):
        _check_cheng_m(N, M)
        return {"N": int(N)}


def _check_cheng_m(N, M):
    if M is not None and int(M) != int(N):
        raise ValueError(
            f"cheng2020 models have M == N (got N={N}, M={M}): set model.M=null or model.M={N}"
        )


#: CompressAI zoo name of each backbone (for anchors and the docs); the registry of every backbone,
#: `codecx.models.BACKBONES`, is built from codecx/conf/model/*.yaml (codecx.models.build)
ZOO_NAMES = {
    "bmshj_factorized": "bmshj2018-factorized",
    "bmshj_hyperprior": "bmshj2018-hyperprior",
    "mbt_mean": "mbt2018-mean",
    "mbt": "mbt2018",
    "cheng_anchor": "cheng2020-anchor",
    "cheng_attn": "cheng2020-attn",
}
