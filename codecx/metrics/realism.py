"""A weight-free realism diagnostic for generative codecs: the high-frequency power ratio.

`hf_power_ratio(x, x_hat)`: per image, the power of `x_hat` above a spatial-frequency cut-off
divided by that of `x` (luma, mean removed, 2-D Hann window, power spectrum summed over the
band, i.e. the radially averaged spectrum integrated above the cut-off). It needs no
pretrained network.

What it can say: MSE-trained decoders average over the plausible details they cannot afford
to code, which removes high-frequency power (ratio well below 1); a working GAN decoder
synthesises texture and pulls the ratio back towards 1 (HiFiC, MS-ILLM). What it cannot say:
whether the synthesised detail is *right* (noise gives ratios >= 1 too), anything about
colour, structure or semantics, or distributional realism as FID/KID measure it; compare
codecs only at the same bitrate and on the same images, and read it with PSNR / FID.

It is `hf_ratio` in eval.py's results (per image in per_image.csv, the mean over the images in
results.json), in `codecx report` and in the periodic validation (`val/hf_ratio`).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hf_power_ratio"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
_NO_POWER = 1e-12  # band power of x at or below this: the ratio is undefined (NaN)


def _band_power(img: Tensor, cutoff: float) -> Tensor:
    """Power of (B,1,H,W) images at radial frequencies above `cutoff` x Nyquist."""
    h, w = img.shape[-2:]
    img = img - img.mean(dim=(-2, -1), keepdim=True)
    win = torch.hann_window(h, periodic=False, dtype=img.dtype, device=img.device)[:, None] * \
        torch.hann_window(w, periodic=False, dtype=img.dtype, device=img.device)[None, :]
    # the real FFT: half the spectrum, the other half its mirror (weight 2 on the columns that
    # have one); the same sum as the full fft2's in float64, in half the time
    power = torch.fft.rfft2(img * win).abs().pow(2)
    fy = torch.fft.fftfreq(h, device=img.device, dtype=img.dtype)[:, None]
    fx = torch.fft.rfftfreq(w, device=img.device, dtype=img.dtype)[None, :]
    radius = torch.sqrt(fx * fx + fy * fy) / 0.5  # 1 = Nyquist along an axis
    mirror = torch.full_like(fx, 2.0)
    mirror[:, 0] = 1.0
    if w % 2 == 0:
        mirror[:, -1] = 1.0  # the Nyquist column is its own mirror
    power = power * mirror
    return (power * (radius > cutoff)).sum(dim=(-3, -2, -1))


def hf_power_ratio(x: Tensor, x_hat: Tensor, cutoff: float = 0.5) -> Tensor:
    """Per-image ratio (B,) of the high-frequency power of `x_hat` to that of `x` (images in
    [0, 1], (B,3,H,W) or (B,1,H,W)); frequencies above `cutoff` x Nyquist (0 < cutoff < 1.42).
    NaN for an image `x` with (numerically) no power above the cut-off, e.g. a flat one."""
    if x.shape != x_hat.shape or x.dim() != 4:
        raise ValueError(f"hf_power_ratio: x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must be "
                         "equal (B,C,H,W) shapes")
    if not 0 < cutoff < 2**0.5:
        raise ValueError(f"hf_power_ratio: cutoff={cutoff} must be in (0, 1.414) (a fraction of Nyquist)")

    def luma(t: Tensor) -> Tensor:
        t = t.double()
        if t.size(1) == 3:
            t = sum(c * t[:, i : i + 1] for i, c in enumerate(_LUMA))
        return t

    ref, power = _band_power(torch.cat((luma(x), luma(x_hat))), cutoff).chunk(2)
    ratio = power / ref.clamp_min(_NO_POWER)
    return ratio.masked_fill(ref <= _NO_POWER, float("nan")).float()
