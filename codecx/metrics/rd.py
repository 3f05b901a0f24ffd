"""Image quality as evaluations measure it (8-bit rounded PSNR, MS-SSIM) and the aggregates of an RD
point over a set of images; coding one image through a real codecx file: codecx.eval.code."""
from __future__ import annotations

import math
from typing import Dict

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor


def to_uint8(x: Tensor) -> Tensor:
    """8-bit rounding of an image in [0, 1] (what a decoder writes to a PNG)."""
    return (x.clamp(0, 1) * 255).round()


def psnr_uint8(x: Tensor, x_hat: Tensor) -> float:
    """PSNR in dB between two images in [0, 1] after rounding both to 8 bits, RGB."""
    return psnr_of_uint8(to_uint8(x), to_uint8(x_hat))


def psnr_of_uint8(x8: Tensor, x_hat8: Tensor) -> float:
    """`psnr_uint8` of images already rounded by `to_uint8`."""
    mse = torch.mean((x8 - x_hat8) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def msssim_uint8(x: Tensor, x_hat: Tensor) -> float:
    """MS-SSIM (Wang et al. 2003) on 8-bit rounded images; nan when the image is too small."""
    return msssim_of_uint8(to_uint8(x), to_uint8(x_hat))


def msssim_of_uint8(x8: Tensor, x_hat8: Tensor) -> float:
    """`msssim_uint8` of images already rounded by `to_uint8`."""
    if min(x8.shape[-2:]) < 161:  # 4 downsamplings of an 11-px window
        return float("nan")
    # both in channels-last: pytorch_msssim's depthwise Gaussian filters run 2.4x faster on one
    # CPU core than in NCHW (or mixed) memory format, same value (tests/test_metrics.py)
    cl = torch.channels_last
    return ms_ssim(x8.contiguous(memory_format=cl), x_hat8.contiguous(memory_format=cl), data_range=255.0).item()


# pixel-weighted aggregates of a set of images, beside the per-image means
WEIGHTED = ("bpp_weighted", "psnr-rgb_weighted")


def aggregate(rows, keys) -> Dict[str, float]:
    """One RD point of per-image rows: the mean of each of `keys` over the images where it is
    defined (an image too small for MS-SSIM does not blank the set's MS-SSIM: `ms-ssim_images`
    counts the images it covers), `images`, and the pixel-weighted aggregates of the image
    codec literature: `bpp_weighted` = total file bits / total pixels, `psnr-rgb_weighted` =
    PSNR of the MSE pooled over all pixels (rows need `height`, `width`, `bytes`, `psnr-rgb`)."""
    point: Dict[str, float] = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if k in r and r[k] is not None and not math.isnan(float(r[k]))]
        point[k] = sum(vals) / len(vals) if vals else float("nan")
        if k == "ms-ssim":
            point["ms-ssim_images"] = len(vals)
    point["images"] = len(rows)
    if rows and all("height" in r and "width" in r for r in rows):
        pixels = [int(r["height"]) * int(r["width"]) for r in rows]
        total = sum(pixels)
        if all("bytes" in r for r in rows):
            point["bpp_weighted"] = sum(8 * float(r["bytes"]) for r in rows) / total
        if all("psnr-rgb" in r for r in rows):
            mse = sum(n * 255.0**2 * 10 ** (-float(r["psnr-rgb"]) / 10) for n, r in zip(pixels, rows)) / total
            point["psnr-rgb_weighted"] = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return point
