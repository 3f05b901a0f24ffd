"""A learned per-channel bias on `y_hat` before `g_s`: the worked example of a trainable latent transform."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codecx.transforms.base import LatentTransform, WalkState


class ChannelBias(LatentTransform):
    """transform=bias: `y_hat' = y_hat + b_c`, one learned offset per latent channel (docs, "Extending codecx")."""

    def attach(self, codec) -> None:
        if getattr(self, "b", None) is None:  # attach may run again (e.g. the same transform in another codec)
            self.b = nn.Parameter(torch.zeros(1, int(codec.M), 1, 1))

    def forward(self, y_hat: Tensor, state: WalkState) -> Tensor:
        state.metrics["bias_abs"] = self.b.detach().abs().mean()
        return y_hat + self.b
