"""Learned / fixed parameter compensation of the quantization residual (Rethinking Latent Variable, WACV 2026,
Fig. 7, C.4)."""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from codecx.transforms.base import WalkState
from codecx.transforms.latent_mse import Compensation

__all__ = ["LPC", "FPC", "PARAMS"]

PARAMS = ("learned", "predicted")
#: the initial / fixed compensation spread: a residual of width 1 is +-3 sigma (FPC's choice)
SIGMA0 = 1.0 / 6.0


class LPC(Compensation):
    """`y_hat' = y_hat + r`, r ~ N(mu_r, sigma_r) in training (reparameterised sample) and
    r = mu_r at decode (Rethinking Latent Variable, WACV 2026, LPC: a compensation distribution of the residual).

    `params=learned`: mu_r, sigma_r are free parameters per latent channel (the supplement's
    "learned parameters", Fig. 7). `params=predicted`: a small conv net predicts them per
    element from the decoded [means, scales, y_hat] (conv3x3(3M->hidden) ReLU
    conv3x3(hidden->2M)). Both start at mu_r = 0 (a checkpoint's output is unchanged at decode)
    and sigma_r = `sigma_init`; `clamp` (None: none) bounds the training sample to +-clamp.
    """

    def __init__(self, params: str = "learned", hidden: int = 128, sigma_init: float = SIGMA0,
                 clamp: float | None = None, latent_mse: float = 0.0):
        super().__init__(latent_mse)
        if params not in PARAMS:
            raise ValueError(f"transform.lpc.params={params!r}: unknown; valid choices: "
                             f"{', '.join(PARAMS)} (learned: free per-channel mu_r, sigma_r; "
                             "predicted: a conv net predicts them per element)")
        if not float(sigma_init) > 0:
            raise ValueError(f"transform.lpc.sigma_init={sigma_init}: must be > 0")
        if clamp is not None and not float(clamp) > 0:
            raise ValueError(f"transform.lpc.clamp={clamp}: must be > 0 or null (no clamp)")
        if int(hidden) < 1:
            raise ValueError(f"transform.lpc.hidden={hidden}: must be a positive channel count")
        self.params, self.hidden = params, int(hidden)
        self.sigma_init = float(sigma_init)
        self.clamp = None if clamp is None else float(clamp)
        self.attached = False

    def attach(self, codec) -> None:
        """Create mu_r, log sigma_r (learned) or the predictor (predicted) for the backbone's `M`."""
        if self.attached:
            return
        M = int(codec.M)
        log_s = math.log(self.sigma_init)
        if self.params == "learned":
            self.mu_r = nn.Parameter(torch.zeros(1, M, 1, 1))
            self.log_sigma_r = nn.Parameter(torch.full((1, M, 1, 1), log_s))
        else:
            if not codec.has_side:  # the factorized prior: no per-element scales
                raise ValueError("transform.lpc.params=predicted reads the prior's scales: the "
                                 "factorized prior has none; use params=learned or a hyperprior "
                                 "backbone (mbt_mean, mbt, cheng_*)")
            self.predictor = nn.Sequential(
                nn.Conv2d(3 * M, self.hidden, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(self.hidden, 2 * M, 3, padding=1))
            last = cast(nn.Conv2d, self.predictor[-1])
            nn.init.zeros_(last.weight)
            bias = cast(Tensor, last.bias)
            with torch.no_grad():
                bias[:M].zero_()
                bias[M:].fill_(log_s)
        self.attached = True
        self._warn_noise_quantizer(codec)

    def distribution(self, y_hat: Tensor, state: WalkState) -> tuple[Tensor, Tensor]:
        """(mu_r, sigma_r), broadcastable to `y_hat`."""
        if not self.attached:
            raise RuntimeError(f"{type(self).__name__} is not attached to a codec: call "
                               "attach(codec) first (the Codec does so when built with transforms=[...])")
        if self.params == "learned":
            return self.mu_r, self.log_sigma_r.exp()
        if state.params is None or state.params.scales is None:
            raise ValueError("transform.lpc.params=predicted needs the prior's scales (a Gaussian "
                             "prior): use params=learned with this backbone")
        means = self.means_of(y_hat, state)
        out = self.predictor(torch.cat([means, state.params.scales, y_hat], dim=1))
        mu, log_sigma = out.chunk(2, dim=1)
        return mu, log_sigma.exp()

    def compensate(self, y_hat: Tensor, state: WalkState) -> Tensor:
        mu, sigma = self.distribution(y_hat, state)
        if not state.training:
            return y_hat + mu  # the mean at eval / decode: deterministic
        r = mu + sigma * torch.randn_like(y_hat)
        if self.clamp is not None:
            r = r.clamp(-self.clamp, self.clamp)
        return y_hat + r

    def extra_repr(self) -> str:
        return f"params={self.params}, clamp={self.clamp}, latent_mse={self.latent_mse}"


class FPC(LPC):
    """Fixed parameter compensation (Rethinking Latent Variable, WACV 2026, C.4, Tab. 7): r ~ N(mu, sigma) with fixed
    mu = 0, sigma = 1/6, clamped to +-0.5, added to `y_hat` in training only (at decode the
    mean, 0: FPC changes training, not the decoder). Nothing is learned: a latent-MSE term on
    FPC's output trains nothing."""

    learned = False

    def __init__(self, mu: float = 0.0, sigma: float = SIGMA0, clamp: float | None = 0.5,
                 latent_mse: float = 0.0):
        super().__init__("learned", sigma_init=sigma, clamp=clamp, latent_mse=latent_mse)
        self.mu = float(mu)

    def attach(self, codec) -> None:
        self.attached = True
        self._warn_noise_quantizer(codec)

    def distribution(self, y_hat: Tensor, state: WalkState) -> tuple[Tensor, Tensor]:
        return y_hat.new_full((), self.mu), y_hat.new_full((), self.sigma_init)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, sigma={self.sigma_init}, clamp={self.clamp}, latent_mse={self.latent_mse}"
