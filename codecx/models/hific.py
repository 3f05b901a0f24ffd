"""The HiFiC-size mean-scale hyperprior of MS-ILLM (Muckley et al., ICML 2023; Mentzer et al.,
"High-Fidelity Generative Image Compression", NeurIPS 2020), as a codecx backbone.

Layout (METHODS.md, "HiFiC-size mean-scale hyperprior"; as in NeuralCompression's
`HiFiCAutoencoder`): encoder conv7x7 3->60, four conv3x3 stride 2 to 120/240/480/960, each
followed by ChannelNorm and ReLU, then conv3x3 960->220 (stride 16); generator ChannelNorm,
conv3x3 220->960, ChannelNorm, 9 residual blocks with an outer skip, four transposed conv3x3
stride 2 to 480/240/120/60 with ChannelNorm and ReLU, conv7x7 60->3; hyper analysis
conv3x3 220->320, ReLU, conv5x5 s2, ReLU, conv5x5 s2; separate mean and scale hyper synthesis;
CompressAI's EntropyBottleneck(320) and GaussianConditional.

The class is an :class:`codecx.models.backbones.MbtMean` (CompressAI's `MeanScaleHyperprior`)
whose four transforms are replaced, so the codec pipeline, every quantizer (scalar and
lattice), latent shift, the regularizers and real coding apply unchanged.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import CompressionModel
from torch import Tensor, nn

from codecx.models.backbones import SCALE_LEVELS, MbtMean
from codecx.models.weights import is_nc_state  # noqa: F401 - re-exported (__all__)

__all__ = ["ChannelNorm2d", "HiFiC", "HiFiCEncoder", "HiFiCGenerator", "MeanScaleSynthesis",
           "is_nc_state", "state_from_nc", "state_to_nc"]

#: the paper's widths: encoder / generator channels, latent M, hyper N, residual blocks
HIFIC_CHANNELS = (60, 120, 240, 480, 960)


class ChannelNorm2d(nn.Module):
    """ChannelNorm of HiFiC (Mentzer et al. 2020): normalise each pixel over its channels
    (mean and unbiased variance, eps 1e-3), then a per-channel affine map."""

    def __init__(self, channels: int, eps: float = 1e-3, affine: bool = True):
        super().__init__()
        if channels < 2:
            raise ValueError(f"ChannelNorm needs at least 2 channels (got {channels})")
        self.eps = float(eps)
        self.affine = affine
        if affine:
            self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
            self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).sum(dim=1, keepdim=True) / (x.size(1) - 1)  # unbiased; 2x aten::var's speed
        x = centred * torch.rsqrt(var + self.eps)
        return self.gamma * x + self.beta if self.affine else x


def _cn_relu(conv: nn.Module, ch: int) -> nn.Sequential:
    return nn.Sequential(conv, ChannelNorm2d(ch), nn.ReLU())


class HiFiCEncoder(nn.Sequential):
    """HiFiC's analysis g_a: conv7x7 then four stride-2 conv3x3 (ChannelNorm, ReLU), conv3x3 to M."""

    def __init__(self, M: int = 220, channels: Sequence[int] = HIFIC_CHANNELS):
        c = [int(v) for v in channels]
        layers = [_cn_relu(nn.Conv2d(3, c[0], 7, padding=3), c[0])]
        for cin, cout in zip(c[:-1], c[1:]):
            layers.append(_cn_relu(nn.Conv2d(cin, cout, 3, stride=2, padding=1), cout))
        layers.append(nn.Conv2d(c[-1], int(M), 3, padding=1))
        super().__init__(*layers)


class _ResidualBlock(nn.Module):
    """conv3x3, ChannelNorm, ReLU, conv3x3, ChannelNorm, plus the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), ChannelNorm2d(ch), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1), ChannelNorm2d(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class HiFiCGenerator(nn.Module):
    """HiFiC's synthesis g_s: ChannelNorm, conv3x3 M->960, ChannelNorm, residual blocks with an
    outer skip, four stride-2 transposed conv3x3 (ChannelNorm, ReLU), conv7x7 to RGB."""

    def __init__(self, M: int = 220, channels: Sequence[int] = HIFIC_CHANNELS,
                 num_residual_blocks: int = 9):
        super().__init__()
        c = [int(v) for v in reversed(list(channels))]  # 960, 480, 240, 120, 60
        self.head = nn.Sequential(ChannelNorm2d(int(M)), nn.Conv2d(int(M), c[0], 3, padding=1),
                                  ChannelNorm2d(c[0]))
        self.residual = nn.Sequential(*[_ResidualBlock(c[0]) for _ in range(int(num_residual_blocks))])
        up = [_cn_relu(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), cout)
              for cin, cout in zip(c[:-1], c[1:])]
        self.tail = nn.Sequential(*up, nn.Conv2d(c[-1], 3, 7, padding=3))

    def forward(self, y_hat: Tensor) -> Tensor:
        h = self.head(y_hat)
        return self.tail(h + self.residual(h))


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class MeanScaleSynthesis(nn.Module):
    """Separate scale and mean hyper-synthesis branches (HiFiC); returns `cat(scales, means)`,
    the layout `MbtMean.params` splits with `chunk(2, 1)`."""

    def __init__(self, N: int, M: int):
        super().__init__()

        def branch():
            return nn.Sequential(_deconv(N, N), nn.ReLU(inplace=True), _deconv(N, N),
                                 nn.ReLU(inplace=True), _conv(N, M, k=3, stride=1))

        self.scale = branch()
        self.mean = branch()

    def forward(self, z_hat: Tensor) -> Tensor:
        return torch.cat((self.scale(z_hat), self.mean(z_hat)), dim=1)


class HiFiC(MbtMean):
    """model=hific: HiFiC-size mean-scale hyperprior (Mentzer et al. 2020; MS-ILLM's autoencoder).

    `N`: hyper channels (320), `M`: latent channels (220), `channels`: the encoder's five
    widths (the generator mirrors them), `num_residual_blocks`: 9. Tests use tiny widths.
    `weights`: a state dict (or a codecx checkpoint) to load; `scale_levels`: levels of the
    Gaussian CDF scale table. Input sizes are padded to a multiple of 64.
    """

    def __init__(self, N: int = 320, M: int = 220, weights: Optional[str] = None,
                 scale_levels: int = SCALE_LEVELS, name: str = "hific",
                 channels: Sequence[int] = HIFIC_CHANNELS, num_residual_blocks: int = 9):
        # CompressionModel directly: MeanScaleHyperprior's own (discarded) transforms are skipped
        CompressionModel.__init__(self)
        N, M = int(N), int(M)
        channels = [int(c) for c in channels]
        if len(channels) != 5 or min(channels) < 2 or M < 2:
            raise ValueError(f"model.channels={channels}, model.M={M}: HiFiC needs five encoder "
                             "widths (>= 2 each, the paper's 60,120,240,480,960) and M >= 2")
        if int(scale_levels) < 2:
            raise ValueError(f"model.scale_levels={scale_levels}: need at least 2 (CompressAI: 64)")
        self.N, self.M, self.name = N, M, str(name)
        self.channels, self.num_residual_blocks = tuple(channels), int(num_residual_blocks)
        self.scale_levels = int(scale_levels)
        self.g_a = HiFiCEncoder(M, channels)
        self.g_s = HiFiCGenerator(M, channels, num_residual_blocks)
        self.h_a = nn.Sequential(_conv(M, N, k=3, stride=1), nn.ReLU(inplace=True), _conv(N, N),
                                 nn.ReLU(inplace=True), _conv(N, N))
        self.h_s = MeanScaleSynthesis(N, M)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        if weights:
            from codecx.models.weights import load_weights

            load_weights(self, weights)

    @staticmethod
    def from_nc_state(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """A NeuralCompression `HiFiCAutoencoder` state dict in this class's key names (load_weights)."""
        return state_from_nc(state)


#: NeuralCompression `HiFiCAutoencoder` key prefix <-> codecx `HiFiC` key prefix (`{i}`: a block
#: index); the released MS-ILLM files (`msillm_target_*.ckpt`) are such state dicts
NC_KEY_PREFIXES = (("encoder.blocks.", "g_a."), ("decoder.block_0.", "g_s.head."),
                   ("decoder.resid_blocks.{i}.sequence.", "g_s.residual.{i}.body."),
                   ("decoder.blocks.", "g_s.tail."), ("hyper_analysis.", "h_a."),
                   ("hyper_synthesis_mean.", "h_s.mean."), ("hyper_synthesis_scale.", "h_s.scale."),
                   ("hyper_bottleneck.", "entropy_bottleneck."),
                   ("latent_bottleneck.", "gaussian_conditional."))


def _rename(state: Mapping[str, Tensor], pairs) -> Dict[str, Tensor]:
    """Keys renamed by the first matching (source prefix, target prefix) pair; others kept."""
    rules = [(re.compile(re.escape(src).replace(r"\{i\}", r"(\d+)")), dst) for src, dst in pairs]
    out = {}
    for k, v in state.items():
        for rx, dst in rules:
            m = rx.match(k)
            if m:
                k = (dst.format(i=m.group(1)) if m.groups() else dst) + k[m.end():]
                break
        out[k] = v
    return out


def state_from_nc(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A NeuralCompression `HiFiCAutoencoder` state dict with codecx `HiFiC` key names (the
    tensors unchanged: the two modules compute the same function, tests/test_reference_nc.py)."""
    return _rename(state, NC_KEY_PREFIXES)


def state_to_nc(model: HiFiC) -> Dict[str, Tensor]:
    """`model`'s state dict in NeuralCompression's `HiFiCAutoencoder` layout (what
    `HiFiCAutoencoder(latent_features=M, hyper_features=N, num_residual_blocks=...)
    .load_state_dict` takes); the encoder widths must be the paper's, NC's are fixed. The CDF
    tables are left empty, as in a fresh HiFiCAutoencoder (NC builds its own with `update()`)."""
    if not isinstance(model, HiFiC):
        raise ValueError(f"only model=hific has a NeuralCompression layout, not {type(model).__name__}")
    if tuple(model.channels) != HIFIC_CHANNELS:
        raise ValueError(f"model.channels={list(model.channels)}: NeuralCompression's HiFiCAutoencoder has "
                         f"the fixed widths {list(HIFIC_CHANNELS)}; only such a hific exports")
    state = _rename(model.state_dict(), [(b, a) for a, b in NC_KEY_PREFIXES])
    tables = ("._quantized_cdf", "._offset", "._cdf_length", ".scale_table")
    return {k: v.new_empty(0) if k.endswith(tables) else v for k, v in state.items()}
