"""Rate-distortion objective of CompressAI's zoo training: `bpp + lmbda * 255^2 * MSE`."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from codecx.types import CodecOutput


def bits_per_pixel(likelihoods: Dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated rate in bits per pixel: -sum(log2 p) over all latents / pixels."""
    total = sum(torch.log(lik).sum() for lik in likelihoods.values())
    return total / (-math.log(2) * num_pixels)


def psnr(mse: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB from a mean squared error."""
    return 10 * torch.log10(peak**2 / mse.clamp_min(1e-12))


def rate_distortion(x: Tensor, out: CodecOutput, lmbda: float) -> Dict[str, Tensor]:
    """The codec loss terms (Ballé et al. 2018): `loss = bpp + lmbda * 255^2 * mse`."""
    n, _, h, w = x.shape
    bpp = bits_per_pixel(out.likelihoods, n * h * w)
    mse = torch.mean((out.x_hat - x) ** 2)
    loss = bpp + lmbda * 255**2 * mse
    return {"loss": loss, "bpp": bpp, "mse": mse, "psnr": psnr(mse.detach())}
