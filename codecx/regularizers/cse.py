"""Conditional source entropy regularizer −H(X|X̂) (002_…: Algorithm 1, eqs. 12–13)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from torch.func import functional_call

from codecx.regularizers.base import AuxPhase, Regularizer
from codecx.regularizers.source_models import ALIGNED, SOURCE_MODELS, SourceModel, build_source_model
from codecx.types import CodecOutput, RegOutput

SOURCE_MODEL_CHOICES = ("auto", *SOURCE_MODELS)


class CSERegularizer(Regularizer):
    """reg=cse: adds `alpha * E[log2 q_theta(X | X_hat)]` (bits per pixel) to the codec loss.

    Sign and units. Eq. 12 minimises `R + lmbda D + alpha E[log q_theta(X|X_hat)]`, whose last
    term is `-alpha H(X|X_hat)` (the paper's underbrace): the codec is pushed to *raise* the
    conditional source entropy. The paper fixes neither base nor normalisation; we measure it
    like R, in bits per pixel (`-log2 q` summed over the 3 channels, averaged over pixels), so
    the term is `-alpha * source_bpp` and alpha weighs bits against bits (alpha = 0.1
    hyperprior, 1 autoregressive/attention, sec. 4.2).

    Algorithm 1: in the codec phase theta is held fixed (its parameters enter detached, so
    gradients reach the codec only through X_hat; X is data); the auxiliary phase "source"
    then fits theta by maximum likelihood on (X, detached X_hat) (eq. 13) with its own Adam
    at `lr` (1e-3 in sec. 4.1).

    `source_model`: "auto" aligns q_theta with the backbone's latent entropy model (sec. 4.1:
    factorized/hyperprior -> "hyperprior" Gaussian, context -> "autoregressive" masked
    context); "hyperprior" or "autoregressive" forces one (the ablation of sec. 10).
    """

    def __init__(self, alpha: float, source_model: str = "auto", lr: float = 1e-3,
                 hidden: int = 32, betas=(0.9, 0.999)):
        super().__init__()
        alpha, lr = float(alpha), float(lr)
        if not alpha >= 0:
            raise ValueError(f"reg.alpha={alpha}: the CSE weight must be >= 0 (0 disables it)")
        if source_model not in SOURCE_MODEL_CHOICES:
            raise ValueError(f"reg.source_model={source_model!r}: choose one of "
                             f"{list(SOURCE_MODEL_CHOICES)}")
        if not lr > 0:
            raise ValueError(f"reg.lr={lr}: the source model's learning rate must be positive")
        self.alpha, self.source_model, self.lr = alpha, source_model, lr
        self.hidden, self.betas = int(hidden), tuple(float(b) for b in betas)
        self.q: Optional[SourceModel] = None
        if source_model != "auto":
            self._build(source_model)

    def _build(self, kind: str) -> None:
        # fork the RNG: initialising theta leaves the codec's random stream (noise) untouched
        with torch.random.fork_rng(devices=[]):
            self.q = build_source_model(kind, hidden=self.hidden)

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
        """Codec-phase term of eq. 12: `-alpha * source_bpp`, theta held fixed."""
        q = self._model()
        frozen = {n: p.detach() for n, p in q.named_parameters()}
        bpp = functional_call(q, frozen, (x, out.x_hat))
        loss = -self.alpha * bpp
        return RegOutput(loss=loss, metrics={"source_bpp": bpp.detach(),
                                             "reg_loss": loss.detach()})

    def aux_phases(self) -> List[AuxPhase]:
        """Phase "source": maximum likelihood of q_theta on (X, detached X_hat) (eq. 13)."""
        q = self._model()

        def loss(x: Tensor, out: CodecOutput):
            return q(x, out.x_hat.detach()), {}

        return [AuxPhase("source", list(q.parameters()), loss, lr=self.lr, betas=self.betas)]
