"""Loss composition: `rate + lmbda * distortion + sum(stage losses)` (DESIGN.md)."""
from codecx.losses.distortion import MSE, MSSSIM, Distortion, psnr
from codecx.losses.rate import Rate, bits_per_pixel

__all__ = ["Distortion", "MSE", "MSSSIM", "Rate", "bits_per_pixel", "psnr", "rate_distortion"]


def rate_distortion(x, out, lmbda: float):
    """The plain codec loss terms (Ballé et al. 2018): `loss = bpp + lmbda * 255^2 * mse`."""
    bpp, _ = Rate()(out.likelihoods, x)
    d, m = MSE()(x, out.x_hat)
    return {"loss": bpp + lmbda * d, "bpp": bpp, "mse": m["mse"], "psnr": m["psnr"]}
