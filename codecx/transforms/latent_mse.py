"""The latent-MSE term `w * mean((y - y_hat')^2)` (Rethinking Latent Variable, WACV 2026, supplement B.1 and Fig. 8).

What it trains: in training `y - y_hat` is a constant of the parameters under every quantizer
(STE and mixed: `y_hat = y + (round(y - means) + means - y).detach()`; noise and the lattices:
`y` plus noise independent of `y`), so the term's gradient flows only through the
compensation in `y_hat' = y_hat + r`: LRP's f, LPC's mu_r / sigma_r or its predictor, and
through their inputs (`y_hat`, the means) the layers that feed them. Without a learned
compensation before it (the term alone, or after FPC) it adds a constant to the loss and
trains nothing: the pre-flight check refuses that (`codecx.config.check.check_latent_mse`)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from codecx.transforms.base import LatentTransform, WalkState

__all__ = ["LatentMSE", "Compensation", "add_latent_mse", "LATENT_MSE", "LATENT_MSE_RAW"]

#: the key of the weighted term in `state.losses`
LATENT_MSE = "latent_mse"
#: the unweighted mean((y - y_hat)^2) in `state.metrics` (logged whatever the weight)
LATENT_MSE_RAW = "latent_mse_raw"


def add_latent_mse(state: WalkState, y_hat: Tensor, weight: float) -> None:
    """Add `weight * mean((y - y_hat)^2)` to `state.losses["latent_mse"]` and log the unweighted
    mean in `state.metrics["latent_mse_raw"]`; nothing where `y` is unknown (the decoder)."""
    if state.y is None:
        return
    d = torch.mean((state.y - y_hat) ** 2)
    state.metrics[LATENT_MSE_RAW] = d.detach()
    if weight:
        term = float(weight) * d
        prev = state.losses.get(LATENT_MSE)
        state.losses[LATENT_MSE] = term if prev is None else prev + term


def _check_weight(latent_mse) -> float:
    try:
        w = float(latent_mse)
    except (TypeError, ValueError):
        raise ValueError(f"latent_mse={latent_mse!r}: must be a number >= 0 (the weight of "
                         "mean((y - y_hat')^2) in the codec loss)") from None
    if not w >= 0:
        raise ValueError(f"latent_mse={latent_mse!r}: must be >= 0")
    return w


class Compensation(LatentTransform):
    """Base of the decoder-side compensations of the quantization residual `y - y_hat`
    (LRP, LPC, FPC; Rethinking Latent Variable (WACV 2026)): `compensate(y_hat, state)` returns `y_hat'`, and
    the optional latent-MSE term is measured on `y_hat'`."""

    def __init__(self, latent_mse: float = 0.0):
        super().__init__()
        self.latent_mse = _check_weight(latent_mse)

    def compensate(self, y_hat: Tensor, state: WalkState) -> Tensor:
        raise NotImplementedError

    def forward(self, y_hat: Tensor, state: WalkState) -> Tensor:
        out = self.compensate(y_hat, state)
        add_latent_mse(state, out, self.latent_mse)
        return out

    @staticmethod
    def means_of(y_hat: Tensor, state: WalkState) -> Tensor:
        """The prior's means, broadcast to `y_hat` (the factorized prior's are per channel)."""
        if state.params is None or state.params.means is None:
            raise ValueError("latent compensation needs the entropy parameters (state.params): "
                             "the codec must pass them to its latent transforms")
        return state.params.means.expand_as(y_hat)

    def _warn_noise_quantizer(self, codec) -> None:
        """The compensation learns the rounding residual: uniform noise gives it nothing to learn."""
        q = getattr(codec, "quantizer", None)
        if q is not None and type(q).__name__ == "NoiseQuantizer":
            warnings.warn(f"{type(self).__name__} with quantizer=noise: in training y_hat is y plus "
                          "noise independent of y, so the residual cannot be predicted; use "
                          "quantizer=mixed (noise for the rate, STE-rounded y_hat around the means "
                          "for g_s, as Minnen & Singh 2020) or quantizer=ste", stacklevel=3)


class LatentMSE(Compensation):
    """Identity transform that only adds `weight * mean((y - y_hat)^2)` (Rethinking Latent Variable, WACV 2026, B.1);
    placed after a learned compensation in the list, it measures (and trains) the compensated
    `y_hat'`; on its own it trains nothing (see the module docstring)."""

    learned = False

    def __init__(self, weight: float = 1.0):
        super().__init__(weight)

    def compensate(self, y_hat: Tensor, state: WalkState) -> Tensor:
        return y_hat
