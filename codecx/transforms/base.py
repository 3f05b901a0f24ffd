"""The decoder-side hook point: latent transforms between `y_hat` and `g_s` (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

from codecx.types import EntropyParams

__all__ = ["Declares", "LatentTransform", "WalkState", "declared"]

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


class Declares:
    """What a stage of the pipeline (a latent transform, an encoder refiner) declares to the
    evaluation, so that the evaluator, the container fingerprint and the header options iterate
    over the declared names instead of naming a method (issue 30, docs/manual/extending.md).
    Class attributes (tuples of names):

    - `header_options`: the codecx header options it writes at the encoder (`state.options`)
      and reads at the decoder (`codecx.coding.options`: registered keys are stored compactly,
      others in its JSON block); the container refuses an option no stage declares.
    - `report_columns`: the per-image columns (per_image.csv) its `report` gives.
    - `summary_metrics`: the means the RD point gets with it (results.json, the summary table):
      its report columns, or an evaluator diagnostic it comes with (the latent shift: `grad_corr`,
      computed by default when a stage asks for it).
    """

    header_options: Tuple[str, ...] = ()
    report_columns: Tuple[str, ...] = ()
    summary_metrics: Tuple[str, ...] = ()


def declared(codec, what: str) -> Tuple[str, ...]:
    """The names the stages of `codec` (its latent transforms, then its encoder refiners)
    declare as `what` (`Declares`' attributes), in order, each once."""
    stages = [*getattr(codec, "transforms", ()), *getattr(codec, "refiners", ())]
    return tuple(dict.fromkeys(k for s in stages for k in getattr(s, what, ())))


class LatentTransform(Declares, nn.Module):
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
    keep what exists). What it declares to the evaluation (header options, report columns,
    summary metrics): `Declares`.
    """

    #: False: an eval-time transform (the latent shift): the training walk (the Relaxed channel)
    #: skips it; it runs in evaluation and coding, and can be added to a trained codec at decode
    #: time (eval.py transform=[NAME], codecx compress --transform NAME)
    in_training: bool = True
    #: True when the encoder chooses something and writes it to `state.options` (latent shift):
    #: the encoder then runs the transforms up to this one; without any, it runs none
    signals: bool = False
    #: True when the output depends on trained parameters (LRP's f, LPC's mu_r / sigma_r):
    #: what a latent-MSE term measured after it can train (Rethinking Latent Variable, WACV 2026); False for a fixed
    #: transform (FPC, the latent-MSE term itself), after which the term trains nothing
    learned: bool = True
    #: where its config node enters the container fingerprint: None, with the other transforms
    #: under `transform`; a key, alone under that key (the latent shift: `shift`, where files
    #: written before issue 30 have it, so that they still decode)
    fingerprint_key: Optional[str] = None

    def attach(self, codec) -> None:
        """Adapt to the codec (its `CodecView`; default: nothing)."""

    def forward(self, y_hat: Tensor, state: WalkState) -> Tensor:
        return y_hat

    def side(self, z_hat: Tensor, state: WalkState) -> Tensor:
        """Change the side latent before `h_s` (default: unchanged)."""
        return z_hat

    def report(self, codec, x: Tensor, options: Mapping[str, Any]) -> Dict[str, Any]:
        """Per-image columns (`report_columns`) of one coded image `x` whose header carries
        `options`; `codec`: the codec (default: the report columns found among the options)."""
        return {k: options[k] for k in self.report_columns if k in options}
