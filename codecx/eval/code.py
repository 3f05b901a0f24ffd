"""Coding one image: through a real codecx file (`code_image`: bpp from its bytes) and every
per-image measurement of an evaluation (`measure`); the torch threads coding uses."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from codecx.coding.container import MAX_PIXELS, decode_image, encode_image, unpack
from codecx.losses import bits_per_pixel
from codecx.metrics.rd import msssim_of_uint8, psnr_of_uint8, to_uint8

NO_FINGERPRINT = bytes(8)


def set_coding_threads(n: Optional[int] = None) -> int:
    """Use `n` torch threads, by default the idle cores (cores this process may use minus the
    1-minute load average, at least 1); returns the number. Extra threads on busy cores make
    the many small tensor ops of entropy coding wait on each other (50x slower measured on a
    loaded 2-core machine). Encoder and decoder must compute bit-identical entropy parameters:
    keep the setting equal on both sides when in doubt."""
    if not n:
        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = min(avail, round(avail - load))
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


def _code(codec, x: Tensor, fingerprint: bytes, max_pixels: int, estimate: bool,
          channels_last: bool, latents=None) -> Tuple[Dict[str, float], Tensor, Tensor]:
    """`code_image`'s (metrics, decoded image) and the decoded image's 8-bit rounding; `latents`:
    code these (already refined, codecx.eval.refine) instead of running the encoder."""
    pixels = x.shape[-2] * x.shape[-1]
    t0 = time.perf_counter()
    with torch.no_grad():  # not inference mode: an encoder refiner (SGA) may enable gradients
        out = codec.compress(x, latents=latents, estimate=estimate)
        data = encode_image(codec, x, fingerprint, compressed=out)
    t1 = time.perf_counter()
    # decoding and measuring need no autograd at all
    with torch.inference_mode():
        x_hat, header = decode_image(codec, data, fingerprint, max_pixels, channels_last)
        t2 = time.perf_counter()
        x8, x_hat8 = to_uint8(x), to_uint8(x_hat)  # once for PSNR, MS-SSIM, LPIPS and the HF ratio
        row = {"bpp": len(data) * 8 / pixels, "bpp_streams": sum(len(s) for s in unpack(data)[1]) * 8 / pixels}
        if estimate:  # the likelihoods of the coded symbols, from the encode walk itself (refiners run once)
            row["bpp_est"] = bits_per_pixel(out["likelihoods"][0], pixels).item()
        row.update({"psnr-rgb": psnr_of_uint8(x8, x_hat8), "ms-ssim": msssim_of_uint8(x8, x_hat8),
                    "encoding_time": t1 - t0, "decoding_time": t2 - t1, "bytes": len(data)})
    for t in codec.transforms:  # each latent transform's columns (the latent shift: the step it signalled)
        row.update(t.report(codec.view, x, header.options))
    return row, x_hat, x_hat8


def code_image(codec, x: Tensor, fingerprint: bytes = NO_FINGERPRINT, max_pixels: int = MAX_PIXELS,
               estimate: bool = True, channels_last: bool = True) -> Tuple[Dict[str, float], Tensor]:
    """Encode one image (1,3,H,W) into a codecx file, decode that file, measure; returns
    (metrics, decoded image). `bpp` counts every byte of the file, header and CRC included;
    `bpp_streams` only the entropy-coded streams; `bpp_est` the likelihoods' estimate (only
    with `estimate`: lattice quantizers integrate over cells for it). `channels_last`: decode
    with the synthesis in channels-last memory format where that is exact (`Codec.decompress`). `codec` must be in eval
    mode and updated (`update(force=True)`); `max_pixels`: the cap of both sides (the caller
    checks the encode with `check_encode` first)."""
    return _code(codec, x, fingerprint, max_pixels, estimate, channels_last)[:2]


def measure_image(codec, x: Tensor, fingerprint: bytes = NO_FINGERPRINT) -> Dict[str, float]:
    """The metrics of `code_image` (real codecx file, header included in `bpp`)."""
    return code_image(codec, x, fingerprint)[0]


def measure(codec, x: Tensor, fingerprint: bytes = NO_FINGERPRINT, lpips=None, grad_corr: bool = False,
            decompose: bool = False, max_pixels: int = MAX_PIXELS, estimate: bool = True,
            channels_last: bool = True, refined=None) -> Tuple[Dict[str, Any], Tensor]:
    """(row, decoded image) of one image: `code_image`'s metrics, what each encoder refiner did to
    it (e.g. SGA's kept latents), LPIPS (Zhang et al. 2018) with `lpips`, the weight-free HF power
    ratio (codecx.metrics.realism), with `grad_corr` the correlation of grad -log p and grad D
    w.r.t. y_hat (arXiv 2501.01231 fig. 6), with `decompose` MSE_t / MSE_a / MSE_q and their ratios
    (Rethinking Latent Variable, WACV 2026, eq. 11)."""
    from codecx.inference.latent_shift import shift_gradient_correlation
    from codecx.metrics.decompose import decompose as decompose_error
    from codecx.metrics.realism import hf_power_ratio

    row, x_hat, x_hat8 = _code(codec, x, fingerprint, max_pixels, estimate, channels_last,
                               None if refined is None else refined.latents)
    if refined is None:
        for r in codec.refiners:  # what each refiner did to this image (e.g. SGA's kept latents)
            row.update(r.report())
    else:  # refined in a batch (codecx.eval.refine.Refined): its columns and time share
        row["encoding_time"] += refined.seconds
        row.update(refined.report)
    with torch.inference_mode():
        if lpips is not None:
            row["lpips"] = lpips(x, x_hat8 / 255).mean().item()  # the 8-bit image, as PSNR
        row["hf_ratio"] = hf_power_ratio(x, x_hat8 / 255).item()  # needs no weights
    if grad_corr:
        row["grad_corr"] = shift_gradient_correlation(codec, x)
    if decompose:
        row.update(decompose_error(codec, x, x_hat))
    return row, x_hat
