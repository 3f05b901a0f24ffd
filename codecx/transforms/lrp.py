"""Latent residual prediction without channel slices (Minnen & Singh 2020, as Rethinking Latent Variable
(WACV 2026) C.4)."""
from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from codecx.transforms.base import WalkState
from codecx.transforms.latent_mse import Compensation

__all__ = ["LRP"]


class LRP(Compensation):
    """`y_hat' = y_hat + scale * tanh(f([means, y_hat]))` (Minnen & Singh 2020, eq. of the LRP
    block), f = conv5x5(2M->hidden) ReLU conv5x5(hidden->hidden2) ReLU conv3x3(hidden2->M),
    stride 1, the reference slice transform without the channel conditioning.

    `y_hat` in training is whatever the quantizer gives: use quantizer=mixed (or ste), whose
    `y_hat` is `round(y - means) + means` with a straight-through gradient. `zero_init` sets
    f's last layer to zero, so a fine-tune from a checkpoint starts from its exact output.
    """

    def __init__(self, hidden: int = 224, hidden2: int = 128, scale: float = 0.5,
                 zero_init: bool = True, latent_mse: float = 0.0):
        super().__init__(latent_mse)
        for name, v in (("hidden", hidden), ("hidden2", hidden2)):
            if int(v) < 1:
                raise ValueError(f"transform.lrp.{name}={v}: must be a positive channel count")
        self.hidden, self.hidden2 = int(hidden), int(hidden2)
        self.scale, self.zero_init = float(scale), bool(zero_init)
        self.f: nn.Module | None = None

    def attach(self, codec) -> None:
        """Build f for the backbone's `M` latent channels."""
        if self.f is not None:
            return
        M = int(codec.M)
        self.f = nn.Sequential(
            nn.Conv2d(2 * M, self.hidden, 5, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(self.hidden, self.hidden2, 5, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(self.hidden2, M, 3, padding=1))
        if self.zero_init:
            last = cast(nn.Conv2d, self.f[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(cast(Tensor, last.bias))
        self._warn_noise_quantizer(codec)

    def compensate(self, y_hat: Tensor, state: WalkState) -> Tensor:
        if self.f is None:
            raise RuntimeError("LRP is not attached to a codec: call attach(codec) first "
                               "(the Codec does so when it is built with transforms=[...])")
        means = self.means_of(y_hat, state)
        return y_hat + self.scale * torch.tanh(self.f(torch.cat([means, y_hat], dim=1)))

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, hidden2={self.hidden2}, scale={self.scale}, "
                f"latent_mse={self.latent_mse}")
