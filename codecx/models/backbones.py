"""CompressAI image codecs split into the explicit stages codecx composes (DESIGN.md).

Each backbone *is* the CompressAI class of the same architecture (same module names, so a
state dict saved from `compressai.zoo` loads unchanged and `update()` / `aux_loss()` are
CompressAI's), plus three stage methods that :class:`codecx.models.codec.Codec` calls:
`side(y)` (hyper analysis, z bottleneck, hyper synthesis), `params(hyper, like, ctx)`
(the prior's means and scales) and, for context models, `context(y_hat)`.
"""
from __future__ import annotations

from typing import Optional

import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.google import get_scale_table
from torch import Tensor

from codecx.types import EntropyParams


#: scale-table levels of the Gaussian CDF tables (log-spaced 0.11 ... 256). CompressAI's 64
#: round scales up by up to 9.3%, which cost ~3% of the y bits over the likelihood estimate
#: on a small Kodak model; 256 levels (3.1% steps) ~0.8%. 64 gives CompressAI's bitstreams.
SCALE_LEVELS = 256


class Backbone:
    """Stage interface shared by all backbones (a mixin over a CompressAI model)."""

    #: entropy-model family: "factorized", "hyperprior" (scale or mean-scale) or "context"
    family: str = "hyperprior"
    #: True when (means, scales) depend on already decoded latents (serial decoding)
    autoregressive: bool = False
    #: levels of the scale table `update()` builds the Gaussian CDF tables for
    scale_levels: int = SCALE_LEVELS

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

    def side(self, y: Tensor):
        """(z_hat, z_likelihoods, hyper features) in the current train/eval mode."""
        z = self.h_a(self._h_a_input(y))
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        return z_hat, z_likelihoods, self.h_s(z_hat)

    def _h_a_input(self, y: Tensor) -> Tensor:
        return y

    def side_from_z_hat(self, z_hat: Tensor) -> Tensor:
        return self.h_s(z_hat)

    def params(self, hyper: Tensor, like: Tensor, ctx: Optional[Tensor] = None) -> EntropyParams:
        scales, means = hyper.chunk(2, 1)
        return EntropyParams(means, scales, self.gaussian_conditional)


class BmshjFactorized(Backbone, FactorizedPrior):
    """Factorized prior of Ballé, Laparra, Simoncelli, "End-to-end optimized image compression" (ICLR 2017) / bmshj2018-factorized."""

    family = "factorized"

    @property
    def downsampling_factor(self) -> int:
        return 16

    def side(self, y):
        return None, None, None

    def params(self, hyper, like, ctx=None):
        eb = self.entropy_bottleneck
        medians = eb._get_medians().detach().reshape(1, -1, *([1] * (like.dim() - 2)))
        return EntropyParams(medians.expand_as(like), None, eb)


class BmshjHyperprior(Backbone, ScaleHyperprior):
    """Scale hyperprior of Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018)."""

    def _h_a_input(self, y):
        return torch.abs(y)

    def params(self, hyper, like, ctx=None):
        return EntropyParams(torch.zeros_like(hyper), hyper, self.gaussian_conditional)


class MbtMean(Backbone, MeanScaleHyperprior):
    """Mean-scale hyperprior of Minnen, Ballé, Toderici, "Joint autoregressive and hierarchical priors" (NeurIPS 2018)."""


class _ContextBackbone(Backbone):
    """Hyperprior plus a 5x5 masked-convolution spatial context (serial decoding)."""

    family = "context"
    autoregressive = True
    kernel_size = 5

    def context(self, y_hat: Tensor) -> Tensor:
        return self.context_prediction(y_hat)

    def params(self, hyper, like, ctx=None):
        gaussian_params = self.entropy_parameters(torch.cat((hyper, ctx), dim=1))
        scales, means = gaussian_params.chunk(2, 1)
        return EntropyParams(means, scales, self.gaussian_conditional)


class Mbt(_ContextBackbone, JointAutoregressiveHierarchicalPriors):
    """Joint autoregressive and hierarchical priors of Minnen, Ballé, Toderici (NeurIPS 2018), mbt2018."""


class ChengAnchor(_ContextBackbone, Cheng2020Anchor):
    """Cheng et al., "Learned image compression with discretized Gaussian mixture likelihoods and attention modules" (CVPR 2020), anchor with a single Gaussian."""

    def __init__(self, N: int = 192, M: Optional[int] = None, **kwargs):
        _check_cheng_m(N, M)
        super().__init__(N=N, **kwargs)


class ChengAttn(_ContextBackbone, Cheng2020Attention):
    """Cheng et al. (CVPR 2020) with simplified attention modules, single Gaussian (cheng2020-attn)."""

    def __init__(self, N: int = 192, M: Optional[int] = None, **kwargs):
        _check_cheng_m(N, M)
        super().__init__(N=N, **kwargs)


def _check_cheng_m(N, M):
    if M is not None and int(M) != int(N):
        raise ValueError(
            f"cheng2020 models have M == N (got N={N}, M={M}): set model.M=null or model.M={N}"
        )


BACKBONES = {
    "bmshj_factorized": BmshjFactorized,
    "bmshj_hyperprior": BmshjHyperprior,
    "mbt_mean": MbtMean,
    "mbt": Mbt,
    "cheng_anchor": ChengAnchor,
    "cheng_attn": ChengAttn,
}

#: CompressAI zoo name of each backbone (for anchors and the docs)
ZOO_NAMES = {
    "bmshj_factorized": "bmshj2018-factorized",
    "bmshj_hyperprior": "bmshj2018-hyperprior",
    "mbt_mean": "mbt2018-mean",
    "mbt": "mbt2018",
    "cheng_anchor": "cheng2020-anchor",
    "cheng_attn": "cheng2020-attn",
}
