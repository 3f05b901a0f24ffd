"""Shallow synthesis transforms of Yang & Mandt, "Computationally-efficient neural image
compression with shallow decoders" (ICCV 2023; arXiv 2304.06244), on a mean-scale hyperprior.

`Shallow`: ELIC's analysis transform (He et al., CVPR 2022; CompressAI's
`Elic2022Official.g_a`, same module names) or a 4-layer CNN, the mean-scale hyperprior of
Minnen et al. (2018) (CompressAI's `MeanScaleHyperprior` h_a / h_s / entropy models), and the
two-layer synthesis `x_hat = conv2(IGDN1(conv1(y_hat)) + conv_res(y_hat))` (the residual
branch joins the hidden layer, as released in mandt-lab/shallow-ntc). `JpegLike`: the same
encoder with a single transposed convolution C -> 3, k18, s16 as the whole decoder.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from compressai.layers import GDN1, AttentionBlock
from compressai.models.sensetime import ResidualBottleneckBlock
from compressai.models.utils import conv
from torch import Tensor, nn

from codecx.models.backbones import SCALE_LEVELS, MbtMean

__all__ = ["Shallow", "JpegLike", "TwoLayerSynthesis", "JpegLikeSynthesis", "elic_analysis",
           "cnn_analysis", "ANALYSES"]


def elic_analysis(N: int, M: int) -> nn.Sequential:
    """ELIC's analysis transform (He et al. 2022), layer for layer CompressAI's
    `Elic2022Official(N, M).g_a` (its state dict loads unchanged)."""
    def rbs():
        return [ResidualBottleneckBlock(N, N) for _ in range(3)]

    return nn.Sequential(
        conv(3, N, kernel_size=5, stride=2), *rbs(),
        conv(N, N, kernel_size=5, stride=2), *rbs(), AttentionBlock(N),
        conv(N, N, kernel_size=5, stride=2), *rbs(),
        conv(N, M, kernel_size=5, stride=2), AttentionBlock(M),
    )


#: the leaky ReLU slope of the CNN analysis: shallow-ntc's `CNNAnalysis` uses tf.nn.leaky_relu (0.2)
NEGATIVE_SLOPE = 0.2
#: the slope of checkpoints whose config predates `model.negative_slope` (torch's LeakyReLU default)
LEGACY_NEGATIVE_SLOPE = 0.01


def cnn_analysis(N: int, M: int, negative_slope: float = NEGATIVE_SLOPE) -> nn.Sequential:
    """The paper's plain CNN analysis (shallow-ntc `CNNAnalysis`): four conv5x5 stride-2
    layers with leaky ReLU (slope 0.2, TensorFlow's default) between."""
    act = lambda: nn.LeakyReLU(float(negative_slope), inplace=True)  # noqa: E731
    return nn.Sequential(
        conv(3, N, 5, 2), act(),
        conv(N, N, 5, 2), act(),
        conv(N, N, 5, 2), act(),
        conv(N, M, 5, 2),
    )


def restore_legacy_slope(backbone: nn.Module, model_config: Mapping[str, Any]) -> None:
    """A checkpoint trained before `model.negative_slope` existed (its config lacks the key)
    gets the slope it was trained with (0.01) in its CNN analysis; the config, and so the codecx
    file fingerprint, stay as written."""
    if isinstance(backbone, Shallow) and backbone.analysis == "cnn" and "negative_slope" not in model_config:
        for m in backbone.g_a.modules():
            if isinstance(m, nn.LeakyReLU):
                m.negative_slope = LEGACY_NEGATIVE_SLOPE
        backbone.negative_slope = LEGACY_NEGATIVE_SLOPE


ANALYSES = {"elic": elic_analysis, "cnn": cnn_analysis}


class TwoLayerSynthesis(nn.Module):
    """Yang & Mandt (2023) two-layer synthesis: `conv2(IGDN1(conv1(y)) + conv_res(y))`.

    conv1 / conv_res: ConvTranspose2d(C -> hidden, k13, s8); conv2: ConvTranspose2d(hidden ->
    3, k5, s2); paddings make the output exactly 16x the input. `residual=False` drops conv_res.
    """

    def __init__(self, C: int, hidden: int = 12, residual: bool = True):
        super().__init__()
        # (in-1)*8 - 2*3 + 13 + 1 = 8*in ; (in-1)*2 - 2*2 + 5 + 1 = 2*in
        self.conv1 = nn.ConvTranspose2d(C, hidden, 13, stride=8, padding=3, output_padding=1)
        self.conv_res = (nn.ConvTranspose2d(C, hidden, 13, stride=8, padding=3, output_padding=1)
                         if residual else None)
        self.igdn = GDN1(hidden, inverse=True)
        self.conv2 = nn.ConvTranspose2d(hidden, 3, 5, stride=2, padding=2, output_padding=1)

    def forward(self, y_hat: Tensor) -> Tensor:
        h = self.igdn(self.conv1(y_hat))
        if self.conv_res is not None:
            h = h + self.conv_res(y_hat)
        return self.conv2(h)


class JpegLikeSynthesis(nn.Sequential):
    """Yang & Mandt (2023) "JPEG-like" synthesis: one ConvTranspose2d(C -> 3, k18, s16)."""

    def __init__(self, C: int):
        # (in-1)*16 - 2*1 + 18 = 16*in
        super().__init__(nn.ConvTranspose2d(C, 3, 18, stride=16, padding=1))


class Shallow(MbtMean):
    """Two-layer shallow decoder of Yang & Mandt (ICCV 2023) on a mean-scale hyperprior.

    Args:
        N: hyperprior width (h_a, h_s; CompressAI's MeanScaleHyperprior N), also the ELIC /
           CNN analysis width.
        M: latent channels C.
        hidden: hidden channels of the two-layer synthesis; None: the paper's 12, or 24
           without the residual branch.
        residual: keep the residual branch conv_res.
        analysis: "elic" or "cnn".
        negative_slope: the leaky ReLU slope of the CNN analysis (0.2 as released; 0.01 before).
        weights: a state dict to load (codecx.models.weights.load_weights).
        scale_levels: levels of the Gaussian scale table.
    """

    def __init__(self, N: int = 192, M: int = 320, hidden: Optional[int] = None,
                 residual: bool = True, analysis: str = "elic", weights: Optional[str] = None,
                 scale_levels: int = SCALE_LEVELS, name: str = "shallow",
                 negative_slope: float = NEGATIVE_SLOPE):
        if analysis not in ANALYSES:
            raise ValueError(f"model.analysis={analysis!r}: choose one of {', '.join(ANALYSES)}")
        if M is None:
            raise ValueError("model.M=null: the shallow backbones need the latent channels M (320)")
        super().__init__(N=int(N), M=int(M))
        if not float(negative_slope) >= 0:
            raise ValueError(f"model.negative_slope={negative_slope}: must be >= 0 (0.2: shallow-ntc's)")
        self.analysis = analysis
        self.residual = bool(residual)
        self.negative_slope = float(negative_slope)
        self.g_a = (cnn_analysis(int(N), int(M), self.negative_slope) if analysis == "cnn"
                    else ANALYSES[analysis](int(N), int(M)))
        self.g_s = self._synthesis(int(M), hidden)
        self.scale_levels = int(scale_levels)
        if weights:
            from codecx.models.weights import load_weights

            load_weights(self, weights)

    def _synthesis(self, M: int, hidden: Optional[int]) -> nn.Module:
        if hidden is None:
            hidden = 12 if self.residual else 24  # the paper's two variants
        if int(hidden) < 1:
            raise ValueError(f"model.hidden={hidden}: need at least 1 hidden channel")
        self.hidden = int(hidden)
        return TwoLayerSynthesis(M, self.hidden, self.residual)


class JpegLike(Shallow):
    """Yang & Mandt (ICCV 2023) "JPEG-like" decoder: one transposed conv C -> 3, k18, s16."""

    def __init__(self, N: int = 192, M: int = 320, analysis: str = "elic",
                 weights: Optional[str] = None, scale_levels: int = SCALE_LEVELS,
                 name: str = "jpeg_like", negative_slope: float = NEGATIVE_SLOPE):
        super().__init__(N=N, M=M, hidden=None, residual=False, analysis=analysis,
                         weights=weights, scale_levels=scale_levels, name=name,
                         negative_slope=negative_slope)

    def _synthesis(self, M: int, hidden: Optional[int]) -> nn.Module:
        self.hidden = 0
        return JpegLikeSynthesis(M)
