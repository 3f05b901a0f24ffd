"""Conditional source entropy regularizer −H(X|X̂) (arXiv 2411.16727: Algorithm 1, eqs. 12–13)."""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
from torch import Tensor
from torch.func import functional_call

from codecx.regularizers.base import AuxPhase, Regularizer
from codecx.regularizers.source_models import (ALIGNED, SOURCE_MODELS, SourceModel, build_source_model,
                                               check_bin_width)
from codecx.types import CodecOutput, RegOutput

SOURCE_MODEL_CHOICES = ("auto", *SOURCE_MODELS)
#: reg.units: a rate in bits per pixel (its `c` channels summed) in each unit
UNITS = {"bpp": lambda bpp, c: bpp,                             # bits per pixel (the default)
         "bits_per_dim": lambda bpp, c: bpp / c,                # bits per sub-pixel
         "nats_per_dim": lambda bpp, c: bpp * math.log(2) / c}  # nats per sub-pixel


def in_units(bpp, units: str, channels: int = 3):
    """A rate in bits per pixel (`channels` summed) expressed in `units` (a key of UNITS)."""
    if units not in UNITS:
        raise ValueError(f"reg.units={units!r}: choose one of {list(UNITS)} (bpp: bits per pixel, "
                         "the 3 channels summed; *_per_dim: per sub-pixel)")
    return UNITS[units](bpp, channels)


class CSERegularizer(Regularizer):
    """reg=cse: adds `alpha * E[log q_theta(X | X_hat)]` (in `units`) to the codec loss.

    Sign and units. Eq. 12 minimises `R + lmbda D + alpha E[log q_theta(X|X_hat)]`, whose last
    term is `-alpha H(X|X_hat)` (the paper's underbrace): the codec is pushed to *raise* the
    conditional source entropy. The paper fixes neither the discretisation of X nor the base
    and normalisation of E[log q]. `bin_width` (0..255 units; 1 = 8-bit, larger = coarser,
    "continuous" = the density at one-level reference width) discretises X (source_models).
    `units`: "bpp" (default) measures it like R, `-log2 q` summed over the 3 channels and
    averaged over pixels, so the term is `-alpha * source_bpp` and alpha weighs bits against
    bits; "bits_per_dim" divides by the 3 channels, "nats_per_dim" also multiplies by ln 2
    (alpha = 0.1 hyperprior, 1 autoregressive/attention, sec. 4.2). `source_bpp` is logged in
    bits per pixel whatever the units.

    Algorithm 1: in the codec phase theta is held fixed (its parameters enter detached, so
    gradients reach the codec only through X_hat; X is data); the auxiliary phase "source"
    then fits theta by maximum likelihood on (X, detached X_hat) (eq. 13) with its own Adam
    at `lr` (1e-3 in sec. 4.1).

    `source_model`: "auto" aligns q_theta with the backbone's latent entropy model (sec. 4.1:
    factorized/hyperprior -> "hyperprior" Gaussian, context -> "autoregressive" masked
    context); "hyperprior" or "autoregressive" forces one (the ablation of sec. 10).
    """

    def __init__(self, alpha: float, source_model: str = "auto", lr: float = 1e-3,
                 hidden: int = 32, betas=(0.9, 0.999), units: str = "bpp",
                 bin_width: Union[float, str, None] = None):
        super().__init__()
        alpha, lr = float(alpha), float(lr)
        if not alpha >= 0:
            raise ValueError(f"reg.alpha={alpha}: the CSE weight must be >= 0 (0 disables it)")
        if source_model not in SOURCE_MODEL_CHOICES:
            raise ValueError(f"reg.source_model={source_model!r}: choose one of "
                             f"{list(SOURCE_MODEL_CHOICES)}")
        if not lr > 0:
            raise ValueError(f"reg.lr={lr}: the source model's learning rate must be positive")
        in_units(0.0, units)  # ValueError naming the choices
        self.units = units
        # None = 1 (8-bit bins): a float default would make the config check refuse "continuous"
        self.bin_width = bin_width if bin_width is not None else 1.0
        check_bin_width(self.bin_width)  # ValueError naming the choices
        self.alpha, self.source_model, self.lr = alpha, source_model, lr
        self.hidden, self.betas = int(hidden), tuple(float(b) for b in betas)
        self.q: Optional[SourceModel] = None
        if source_model != "auto":
            self._build(source_model)

    def _build(self, kind: str) -> None:
        # fork the RNG: initialising theta leaves the codec's random stream (noise) untouched
        with torch.random.fork_rng(devices=[]):
            self.q = build_source_model(kind, hidden=self.hidden, bin_width=self.bin_width)

    def attach(self, codec) -> None:
        """Pick the source model aligned with `codec.backbone.family` (when "auto")."""
        if self.source_model == "auto":
            family = codec.backbone.family
            if family not in ALIGNED:
                raise ValueError(f"reg.source_model=auto: no aligned source model for backbone "
                                 f"family {family!r}; set reg.source_model to one of "
                                 f"{list(SOURCE_MODELS)}")
            if self.q is None or self.q.kind != ALIGNED[family]:
                self._build(ALIGNED[family])

    def _model(self) -> SourceModel:
        if self.q is None:
            raise RuntimeError("CSERegularizer(source_model='auto') must be attached to a codec "
                               "(attach(codec)) before use")
        return self.q

    def forward(self, x: Tensor, out: CodecOutput) -> RegOutput:
        """Codec-phase term of eq. 12: `-alpha * source_bpp` (in `units`), theta held fixed."""
        q = self._model()
        frozen = {n: p.detach() for n, p in q.named_parameters()}
        bpp = functional_call(q, frozen, (x, out.x_hat))
        loss = -self.alpha * in_units(bpp, self.units, x.shape[1])
        return RegOutput(loss=loss, metrics={"source_bpp": bpp.detach(),
                                             "reg_loss": loss.detach()})

    def aux_phases(self) -> List[AuxPhase]:
        """Phase "source": maximum likelihood of q_theta on (X, detached X_hat) (eq. 13)."""
        q = self._model()

        def loss(x: Tensor, out: CodecOutput):
            return q(x, out.x_hat.detach()), {}

        return [AuxPhase("source", list(q.parameters()), loss, lr=self.lr, betas=self.betas)]
