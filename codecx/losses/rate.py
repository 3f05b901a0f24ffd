"""Rate terms of the codec loss (`rate=` group): the estimated bits per pixel."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, cast

import torch
from torch import Tensor, nn

__all__ = ["Rate", "TargetRate", "bits_per_pixel", "bits_per_image_pixel", "ILLM_LAMBDA_A"]


def bits_per_pixel(likelihoods: Dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated rate in bits per pixel: -sum(log2 p) over all latents / pixels."""
    total = cast(Tensor, sum(torch.log(lik).sum() for lik in likelihoods.values()))
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


#: MS-ILLM's lambda_a per target bpp (Muckley et al. 2023, appendix table 3; lambda_b = 2^-4)
ILLM_LAMBDA_A = {0.00875: 32.0, 0.0175: 16.0, 0.035: 8.0, 0.07: 4.0, 0.14: 2.0, 0.3: 1.0,
                 0.45: 0.5, 0.9: 0.25}


def bits_per_image_pixel(likelihoods: Dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated bits per pixel of each image of the batch, shape (B,)."""
    bits = cast(Tensor, sum(torch.log(lik).flatten(1).sum(1) for lik in likelihoods.values()))
    return bits / (-math.log(2) * num_pixels)


class TargetRate(Rate):
    """rate=target: HiFiC's rate targeting (Mentzer et al. 2020; MS-ILLM appendix A.1).

    Per image i, the rate term is `lambda_i * bpp_i` with `lambda_i = lambda_a` when the
    image's bpp is above `target_bpp`, else `lambda_b` (2^-4); the batch term is the mean. For
    the first `warmup_steps` global steps the target is x`warmup_target_factor` (1.429) and
    lambda_a x`warmup_lambda_a_factor` (0.5). `lambda_a=null` takes MS-ILLM's value for the
    target (32 ... 0.25 for 0.00875 ... 0.9 bpp). The comparison uses the rate estimate of the
    likelihoods it is given (HiFiC compares the hard-quantized rate). Use with `lmbda=1`: the
    distortion weight is then 1 and these lambdas set the trade-off.
    """

    def __init__(self, target_bpp: float, lambda_a: Optional[float] = None,
                 lambda_b: float = 2.0**-4, warmup_steps: int = 50000,
                 warmup_target_factor: float = 1.429, warmup_lambda_a_factor: float = 0.5):
        super().__init__()
        self.target_bpp = float(target_bpp)
        if not self.target_bpp > 0:
            raise ValueError(f"rate.target_bpp={target_bpp}: the target rate must be > 0 bpp")
        if lambda_a is None:
            match = [v for t, v in ILLM_LAMBDA_A.items() if math.isclose(t, self.target_bpp)]
            if not match:
                raise ValueError(f"rate.lambda_a=null: MS-ILLM has no lambda_a for target_bpp="
                                 f"{target_bpp} (its targets: {sorted(ILLM_LAMBDA_A)}); set "
                                 "rate.lambda_a")
            lambda_a = match[0]
        self.lambda_a, self.lambda_b = float(lambda_a), float(lambda_b)
        if not self.lambda_a > self.lambda_b >= 0:
            raise ValueError(f"rate.lambda_a={lambda_a}, rate.lambda_b={lambda_b}: need "
                             "lambda_a > lambda_b >= 0 (above the target the rate weighs more)")
        self.warmup_steps = int(warmup_steps)
        self.warmup_target_factor = float(warmup_target_factor)
        self.warmup_lambda_a_factor = float(warmup_lambda_a_factor)

    def schedule(self, step: int) -> Tuple[float, float]:
        """(target bpp, lambda_a) at global step `step`."""
        if step < self.warmup_steps:
            return (self.target_bpp * self.warmup_target_factor,
                    self.lambda_a * self.warmup_lambda_a_factor)
        return self.target_bpp, self.lambda_a

    def weights(self, bpp: Tensor, step: int) -> Tensor:
        """The per-image rate weights lambda_i for per-image rates `bpp` (B,)."""
        target, lam_a = self.schedule(step)
        return torch.where(bpp.detach() > target, bpp.new_tensor(lam_a), bpp.new_tensor(self.lambda_b))

    def forward(self, likelihoods, x, step: int = 0):
        n, _, h, w = x.shape
        bpp = bits_per_image_pixel(likelihoods, h * w)
        lam = self.weights(bpp, step)
        target, _ = self.schedule(step)
        term = (lam * bpp).mean()
        return term, {"bpp": bpp.mean(), "rate_target": bpp.new_tensor(target),
                      "above_target": (bpp.detach() > target).float().mean()}
