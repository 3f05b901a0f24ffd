"""Rate-distortion measurements of one image from a real bitstream (bpp from bytes)."""
from __future__ import annotations

import math
import time
from typing import Dict

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

from codecx.losses import bits_per_pixel


def to_uint8(x: Tensor) -> Tensor:
    """8-bit rounding of an image in [0, 1] (what a decoder writes to a PNG)."""
    return (x.clamp(0, 1) * 255).round()


def psnr_uint8(x: Tensor, x_hat: Tensor) -> float:
    """PSNR in dB between two images in [0, 1] after rounding both to 8 bits, RGB."""
    mse = torch.mean((to_uint8(x) - to_uint8(x_hat)) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def msssim_uint8(x: Tensor, x_hat: Tensor) -> float:
    """MS-SSIM (Wang et al. 2003) on 8-bit rounded images; nan when the image is too small."""
    if min(x.shape[-2:]) < 161:  # 4 downsamplings of an 11-px window
        return float("nan")
    return ms_ssim(to_uint8(x), to_uint8(x_hat), data_range=255.0).item()


@torch.no_grad()
def measure_image(codec, x: Tensor) -> Dict[str, float]:
    """Encode and decode one image (1,3,H,W) and measure it; `codec` must be updated."""
    h, w = x.shape[-2:]
    t0 = time.perf_counter()
    enc = codec.compress(x)
    t1 = time.perf_counter()
    x_hat = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
    t2 = time.perf_counter()
    n_bytes = sum(len(s) for s in enc["strings"][0])
    bpp_est = bits_per_pixel(codec(x).likelihoods, h * w).item()
    return {"bpp": n_bytes * 8 / (h * w), "bpp_est": bpp_est, "psnr-rgb": psnr_uint8(x, x_hat),
            "ms-ssim": msssim_uint8(x, x_hat), "encoding_time": t1 - t0,
            "decoding_time": t2 - t1, "bytes": n_bytes}
