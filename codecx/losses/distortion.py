"""Distortion terms of the codec loss (`distortion=` group), in the units `lmbda` multiplies."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

__all__ = ["Distortion", "MSE", "MSSSIM", "psnr"]


def psnr(mse: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB from a mean squared error."""
    return 10 * torch.log10(peak**2 / mse.clamp_min(1e-12))


class Distortion(nn.Module):
    """`forward(x, x_hat)` -> (the distortion `lmbda` multiplies, metrics); images in [0, 1].

    Every distortion also reports `mse` and `psnr` so that runs stay comparable.
    """

    def forward(self, x: Tensor, x_hat: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError

    @staticmethod
    def mse_metrics(x: Tensor, x_hat: Tensor) -> Dict[str, Tensor]:
        mse = torch.mean((x_hat - x) ** 2)
        return {"mse": mse, "psnr": psnr(mse.detach())}


class MSE(Distortion):
    """distortion=mse: `255^2 * MSE` (CompressAI's zoo training, Ballé et al. 2018)."""

    def forward(self, x, x_hat):
        m = self.mse_metrics(x, x_hat)
        return 255**2 * m["mse"], m


class MSSSIM(Distortion):
    """distortion=ms_ssim: `1 - MS-SSIM` (Wang et al. 2003; CompressAI's MS-SSIM models,
    lambdas 2.4 ... 220). Images need at least 161 px per side for the 5 scales."""

    def forward(self, x, x_hat):
        from pytorch_msssim import ms_ssim

        m = self.mse_metrics(x, x_hat)
        s = ms_ssim(x_hat, x, data_range=1.0, size_average=True)
        m["ms_ssim"] = s.detach()
        return 1 - s, m
