"""Rate terms of the codec loss (`rate=` group): the estimated bits per pixel."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

__all__ = ["Rate", "bits_per_pixel"]


def bits_per_pixel(likelihoods: Dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated rate in bits per pixel: -sum(log2 p) over all latents / pixels."""
    total = sum(torch.log(lik).sum() for lik in likelihoods.values())
    return total / (-math.log(2) * num_pixels)


class Rate(nn.Module):
    """rate=bpp: the estimated bits per pixel of the batch (Ballé et al. 2018), unweighted.

    `forward(likelihoods, x, step)` returns `(loss term, metrics)`; `metrics["bpp"]` is the
    batch's estimated rate whatever the weighting (rate targeting weighs it per image).
    """

    def forward(self, likelihoods: Dict[str, Tensor], x: Tensor, step: int = 0
                ) -> Tuple[Tensor, Dict[str, Tensor]]:
        n, _, h, w = x.shape
        bpp = bits_per_pixel(likelihoods, n * h * w)
        return bpp, {"bpp": bpp}
