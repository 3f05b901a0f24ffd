"""The regularizer interface: a codec-loss term plus optional auxiliary training phases."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

from codecx.types import CodecOutput, RegOutput

AuxLoss = Callable[[Tensor, CodecOutput], Tuple[Tensor, Dict[str, Tensor]]]


@dataclass
class AuxPhase:
    """One auxiliary optimisation phase run after the codec step (DESIGN.md, "phases").

    `loss(x, out)` receives the batch and the codec's outputs *detached*; only `params` are
    trainable while it runs. `optimizer` ("adam" | "adamw"), `lr`, `betas`, `weight_decay` and
    `clip_max_norm` (the phase's gradient-norm clip; None: no clipping) are its defaults;
    `schedule.phases.<name>` overrides them. `name` is also the phase's parameter group in
    `schedule.stages`. `uses_batch=False` marks a loss that ignores the batch (the quantile
    fit): under gradient accumulation it runs once per optimizer step, after the codec's step,
    instead of once per batch.
    """

    name: str
    params: List[nn.Parameter]
    loss: AuxLoss
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    metrics: Dict[str, Tensor] = field(default_factory=dict)
    optimizer: str = "adam"
    clip_max_norm: Optional[float] = None
    uses_batch: bool = True


class Regularizer(nn.Module):
    """Adds `forward(x, out).loss` to the codec loss; may own models trained in `aux_phases`.

    `attach(codec)` is called once with the codec so a regularizer can align itself with the
    backbone (for example pick the source entropy model of the same family).
    """

    def attach(self, codec) -> None:
        """Adapt to the codec (default: nothing)."""

    def forward(self, x: Tensor, out: CodecOutput) -> RegOutput:
        return RegOutput(loss=x.new_zeros(()))

    def aux_phases(self) -> List[AuxPhase]:
        return []


class NoRegularizer(Regularizer):
    """reg=none: the plain rate-distortion objective."""
