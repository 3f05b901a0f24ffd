"""The decoder-side hook point: latent transforms between `y_hat` and `g_s` (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from torch import Tensor, nn

from codecx.types import EntropyParams

__all__ = ["LatentTransform", "WalkState"]

#: the walk's channels' names (codecx.quantizers.channels; "refine": SGA's relaxation)
MODES = ("train", "eval", "encode", "decode", "identity", "refine")


@dataclass
class WalkState:
    """What the stages of one walk of the pipeline share, for one image (one batch in training).

    `codec` is the codec's narrow view (`codecx.models.codec.CodecView`: g_s, quantizer,
    prior, strides, lmbda, distortion); `mode` the channel's name (`MODES`). `x` (the unpadded
    input) and `y` are None at the decoder. `options` are the header
    options of the codecx file: transforms write them where `x` is known (`encoder_side`)
    and read them at the decoder. Every stage adds its loss terms to `losses` (summed into
    the codec loss by the training loop) and what to log to `metrics`.
    """

    codec: Any
    mode: str
    x: Optional[Tensor] = None
    y: Optional[Tensor] = None
    params: Optional[EntropyParams] = None
    options: Dict[str, Any] = field(default_factory=dict)
    losses: Dict[str, Tensor] = field(default_factory=dict)
    metrics: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def training(self) -> bool:
        return self.mode == "train"

    @property
    def encoder_side(self) -> bool:
        """True where the input image is known (training, eval forward, encoding)."""
        return self.x is not None


class LatentTransform(nn.Module):
    """A stage between `y_hat` and `g_s`, run on both sides of the channel (DESIGN.md).

    `forward(y_hat, state)` returns the `y_hat` that `g_s` sees. A transform may own
    parameters (trained with the codec, saved in the checkpoint, parameter group
    `transforms`), add loss terms (`state.losses[name] = ...`, already weighted) and
    metrics, and signal choices to the decoder through `state.options` (written when
    `state.encoder_side`, read otherwise; the options must be JSON-serialisable). `side`
    may change `z_hat` before the hyper synthesis (hyperprior backbones). `attach(view)` is
    called when the codec is built, before any checkpoint is loaded, with the codec's narrow
    view (`CodecView`: `M`, strides, quantizer, prior, g_s): build layers that depend on it
    (e.g. `view.M`) there, once (it may be called again with an already attached transform:
    keep what exists).
    """

    #: False: the transform is skipped in training (an inference-time method such as latent shift)
    in_training: bool = True
    #: True when the encoder chooses something and writes it to `state.options` (latent shift):
    #: the encoder then runs the transforms up to this one; without any, it runs none
    signals: bool = False
    #: True when the output depends on trained parameters (LRP's f, LPC's mu_r / sigma_r):
    #: what a latent-MSE term measured after it can train (Rethinking Latent Variable, WACV 2026); False for a fixed
    #: transform (FPC, the latent-MSE term itself), after which the term trains nothing
    learned: bool = True

    def attach(self, codec) -> None:
        """Adapt to the codec (its `CodecView`; default: nothing)."""

    def forward(self, y_hat: Tensor, state: WalkState) -> Tensor:
        return y_hat

    def side(self, z_hat: Tensor, state: WalkState) -> Tensor:
        """Change the side latent before `h_s` (default: unchanged)."""
        return z_hat
