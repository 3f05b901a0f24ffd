"""Latent shift: use the entropy gradient the decoder already has (arXiv 2501.01231, sec. 4, D.1-D.2, F).

After decoding, the decoder knows `g = grad_{y_hat} -log p(y_hat | z_hat)`. Trained codecs
nearly satisfy the KKT condition E[g + lmbda grad_{y_hat} D] = 0 (Theorem 2), so `g` is
anti-correlated with the (unknown) distortion gradient and

    y_hat <- y_hat + rho_h * g                                                (main shift)

reduces the distortion for a well-chosen step. The encoder tries every candidate step at
once (one batched `g_s` call over the candidates, not sequential decoder passes), keeps the
one with the lowest distortion and signals its index (`shift_index` in the codecx header
options). The candidate list contains 0, so the reconstruction is never worse than without
shift on the encoder's own distortion. Optionally (`side_candidates`) the side latent is
shifted too, `z_hat <- z_hat + rho_f * grad_{z_hat} -log p_f(z_hat)`, before `h_s`; the y
symbols are then coded with the shifted z's entropy parameters, and the encoder picks rho_f
by the estimated y bits (eq. 5; `side_shift_index`). Hyperprior backbones only: with a
serial context model the y rate of each rho_f would need its own serial pass.

Modes (appendix D.2 baselines): ``"latent"`` (the gradient), ``"sign"`` (rho * sign(g):
for a Gaussian prior, sign(y_hat - means), the paper's sign shift), ``"scalar"`` (the same
rho added to every latent, the paper's scalar shift).

`g` has a closed form for the scalar Gaussian bin likelihood (`gaussian_bin_nll_grad`); for
lattice symbols (and the factorized prior) it is the autograd gradient of the quantizer's
likelihood (the Voronoi-cell probability). Encoder and decoder compute it with the same code
on the same `y_hat` and prior, so they shift identically.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from compressai.entropy_models import GaussianConditional
from torch import Tensor

from codecx.quantizers.channels import Hard
from codecx.quantizers.scalar import ScalarQuantizer
from codecx.transforms.base import LatentTransform, WalkState
from codecx.types import EntropyParams

__all__ = ["LatentShift", "SHIFT_MODES", "gaussian_bin_nll_grad", "rate_gradient", "side_rate_gradient",
           "shift_gradient_correlation"]

SHIFT_MODES = ("latent", "sign", "scalar")
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------- gradients
def gaussian_bin_nll_grad(y_hat: Tensor, means: Tensor, scales: Tensor, bound: Optional[float] = 1e-9) -> Tensor:
    """Closed-form d/dy_hat of -log P(y_hat), P = mass of N(means, scales) on [y_hat +- 1/2].

    Matches CompressAI's GaussianConditional likelihood (computed on |y_hat - means|, lower
    bound `bound` whose gradient passes through when it pushes the likelihood up):
    with v = |t|, t = y_hat - means, a = (1/2 - v)/s, b = (-1/2 - v)/s,
    P = Phi(a) - Phi(b) and d(-log P)/dt = sign(t) (phi(a) - phi(b)) / (s max(P, bound)).
    `scales` must already be lower-bounded as the entropy model does.
    """
    t = y_hat - means
    v = t.abs()
    a, b = (0.5 - v) / scales, (-0.5 - v) / scales
    p = 0.5 * torch.erfc(-a * math.sqrt(0.5)) - 0.5 * torch.erfc(-b * math.sqrt(0.5))
    dens = (torch.exp(-0.5 * a * a) - torch.exp(-0.5 * b * b)) * _INV_SQRT2PI
    if bound is not None:
        p = p.clamp_min(bound)
    return torch.sign(t) * dens / (scales * p)


def rate_gradient(quantizer, y_hat: Tensor, params: EntropyParams) -> Tensor:
    """grad_{y_hat} -log p(y_hat | prior) in nats, same shape as `y_hat` (no graph kept).

    Closed form for scalar quantizers with a Gaussian prior; autograd of the quantizer's
    likelihood otherwise (lattice cell probabilities, factorized prior).
    """
    m = params.entropy_model
    if isinstance(quantizer, ScalarQuantizer) and isinstance(m, GaussianConditional):
        bound = float(m.likelihood_lower_bound.bound) if m.use_likelihood_bound else None
        return gaussian_bin_nll_grad(y_hat, params.means, m.lower_bound_scale(params.scales), bound)
    with _autograd():
        detached = EntropyParams(params.means.detach().clone(),
                                 None if params.scales is None else params.scales.detach().clone(), m,
                                 params.density)  # a factorized prior's mass (bmshj_factorized's y)
        v = y_hat.detach().clone().requires_grad_(True)
        nll = -quantizer.likelihood(v, detached).log().sum()
        return torch.autograd.grad(nll, v)[0]


def side_rate_gradient(prior, z_hat: Tensor) -> Tensor:
    """grad_{z_hat} -log p_f(z_hat) under the side prior `prior.side_prior(z_hat)` (the entropy
    bottleneck's; `prior`: the codec's view or a backbone), by autograd."""
    with _autograd():
        v = z_hat.detach().clone().requires_grad_(True)
        nll = -prior.side_prior(v).likelihood(v).log().sum()
        return torch.autograd.grad(nll, v)[0]


def _autograd():
    """Gradients on, also where the caller decodes under `torch.inference_mode` (the evaluator):
    the tensors cloned inside are ordinary ones."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


# ---------------------------------------------------------------------------- the shift
def _index(options: Optional[Dict], key: str, n: int) -> int:
    """A validated candidate index from the header options."""
    if options is None or key not in options:
        raise ValueError(f"this codec applies a latent shift: decompress needs options[{key!r}] "
                         "(Codec.compress(...)['options'], or the codecx header options)")
    k = options[key]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ValueError(f"options[{key!r}]={k!r}: expected an integer in 0..{n - 1}")
    return k


class LatentShift(LatentTransform):
    """Encoder-chosen shift of the decoded latents (arXiv 2501.01231, sec. 4), a latent transform.

    Args:
        mode: "latent" (rho * grad -log p), "sign" (rho * sign(grad)) or "scalar" (+rho).
        candidates: main-shift steps rho_h; must contain 0 (the paper tries 8).
        side_candidates: side-shift steps rho_f (default (0,): no side shift); must contain 0.
        batch: most candidates per `g_s` call (0: all at once).
        fraction: share of the latent positions on which the encoder compares the candidates
            (1: the whole image, exact and never worse than no shift). Below 1 the candidates
            are compared on a regular grid of `tile` x `tile` latent tiles (with a 2-latent
            margin, beyond g_s's receptive field) covering about that share: a cheaper,
            approximate choice (CPU encoders, where one g_s costs about a whole encode).
        tile: tile side in latents for `fraction` < 1.

    No parameters or buffers: checkpoints and fingerprints are unaffected.
    """

    def __init__(self, mode: str = "latent",
                 candidates: Sequence[float] = (0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16),
                 side_candidates: Sequence[float] = (0.0,), batch: int = 0, fraction: float = 1.0,
                 tile: int = 8):
        super().__init__()
        if mode not in SHIFT_MODES:
            raise ValueError(f"shift mode={mode!r}: choose one of {', '.join(SHIFT_MODES)}")
        self.mode = mode
        self.candidates = [float(c) for c in candidates]
        self.side_candidates = [float(c) for c in side_candidates]
        for name, c in (("candidates", self.candidates), ("side_candidates", self.side_candidates)):
            if 0.0 not in c:
                raise ValueError(f"shift {name}={c}: must contain 0 (no shift), so shifting is never worse")
        self.batch = int(batch)
        if not 0 < float(fraction) <= 1:
            raise ValueError(f"shift fraction={fraction}: expected 0 < fraction <= 1")
        self.fraction, self.tile = float(fraction), int(tile)

    #: an eval-time method: never applied in training; the encoder signals its choice
    in_training = False
    signals = True
    header_options = ("shift_index", "side_shift_index")
    #: per image: which candidate step the encoder signalled (read from the header)
    report_columns = ("shift_index", "side_shift_index")
    #: corr(grad -log p, grad D) of the unshifted y_hat (arXiv 2501.01231 fig. 6), on by default with a shift
    summary_metrics = ("grad_corr",)
    #: the fingerprint part of files written before issue 30 (eval.py shift=..., codecx compress --shift)
    fingerprint_key = "shift"

    def forward(self, y_hat: Tensor, state: WalkState) -> Tensor:
        """The main shift: chosen by distortion where `x` is known, read from the options otherwise."""
        if not state.encoder_side:
            return self.main_decode(state.codec, y_hat, state.params, state.options)
        y_hat, k = self.main_encode(state.codec, state.x, y_hat, state.params)
        state.metrics["shift_index"] = torch.tensor([k])
        state.options["shift_index"] = k
        return y_hat

    def side(self, z_hat: Tensor, state: WalkState) -> Tensor:
        """The side shift of `z_hat` before `h_s` (when `side_candidates` has more than 0)."""
        if not self.side_active:
            return z_hat
        if not state.encoder_side:
            return self.side_decode(state.codec, z_hat, state.options)
        z_hat, k = self.side_encode(state.codec, state.y, z_hat)
        state.metrics["side_shift_index"] = torch.tensor([k])
        state.options["side_shift_index"] = k
        return z_hat

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, candidates={self.candidates}, side_candidates={self.side_candidates}"

    @property
    def side_active(self) -> bool:
        """Whether the side latent is shifted too."""
        return len(self.side_candidates) > 1

    # ------------------------------------------------------------------ main latent
    def direction(self, quantizer, y_hat: Tensor, params: EntropyParams) -> Tensor:
        """The per-element direction the steps multiply (decoder-computable)."""
        if self.mode == "scalar":
            return torch.ones_like(y_hat)
        g = rate_gradient(quantizer, y_hat, params)
        return torch.sign(g) if self.mode == "sign" else g

    @torch.no_grad()
    def distortions(self, codec, x: Tensor, y_hat: Tensor, direction: Tensor,
                    candidates: Optional[Sequence[float]] = None) -> Tensor:
        """The configured distortion (`codec.distortion`, the codec's view) of the clamped
        reconstruction for every candidate step (batched g_s calls, cropped as the walk does)."""
        cands = torch.tensor(self.candidates if candidates is None else candidates, dtype=y_hat.dtype,
                             device=y_hat.device)
        h, w = x.shape[-2:]
        up = int(codec.latent_stride)
        distortion = codec.distortion
        tiles = self._tiles(y_hat.shape[-2:], (h, w), up) if self.fraction < 1 else None
        if tiles is not None:  # (n, C, t + 2m, t + 2m) latent windows and (n, 3, t up, t up) targets
            if self.tile * up < getattr(distortion, "min_size", 0):
                raise ValueError(f"shift fraction={self.fraction} judges the candidates on {self.tile * up}-px "
                                 f"tiles; distortion {type(distortion).__name__} needs {distortion.min_size} px: "
                                 "use fraction=1 (the whole image) or a larger tile")
            y_hat, direction, x, crop = tiles(y_hat), tiles(direction), tiles.target(x), tiles.crop
        step = self.batch or len(cands)
        out = []
        for c in cands.split(step):
            yk = (y_hat.unsqueeze(0) + c.view(-1, 1, 1, 1, 1) * direction.unsqueeze(0)).flatten(0, 1)
            xk = codec.synthesize(yk, (h, w)) if tiles is None else codec.g_s(yk)[..., crop, crop]
            for xi in xk.clamp(0, 1).unflatten(0, (len(c), -1)):
                out.append(distortion(x, xi)[0].reshape(()))
        return torch.stack(out)

    def _tiles(self, y_shape, x_shape, up: int) -> Optional["_Tiles"]:
        """A regular grid of interior tiles covering ~`fraction` of the latent (None: too small);
        `up`: g_s's upsampling (the backbone's latent stride)."""
        t, m = self.tile, 2
        hy, wy = (min(a, b // up) for a, b in zip(y_shape, x_shape))  # latents whose pixels are all in x
        rows, cols = hy - t - 2 * m + 1, wy - t - 2 * m + 1
        if rows < 1 or cols < 1:
            return None
        n = max(1, math.ceil(self.fraction * y_shape[0] * y_shape[1] / (t * t)))
        nr = max(1, min(rows, round(math.sqrt(n * rows / cols))))
        nc = max(1, min(cols, math.ceil(n / nr)))
        ii = [min(rows - 1, int((k + 0.5) * rows / nr)) for k in range(nr)]  # stratum centres
        jj = [min(cols - 1, int((k + 0.5) * cols / nc)) for k in range(nc)]
        corners = [(i, j) for i in ii for j in jj][:n]
        if len(corners) * (t + 2 * m) ** 2 >= y_shape[0] * y_shape[1]:
            return None  # tiles would cost more than the whole image
        return _Tiles(corners, t, m, up)

    @torch.no_grad()
    def main_encode(self, codec, x: Tensor, y_hat: Tensor, params: EntropyParams) -> Tuple[Tensor, int]:
        """(shifted y_hat, chosen index) for one image `x` (1, 3, H, W) and its decoded y_hat."""
        d = self.direction(codec.quantizer, y_hat, params)
        k = int(torch.argmin(self.distortions(codec, x, y_hat, d)))  # first minimum
        return y_hat + self.candidates[k] * d, k

    @torch.no_grad()
    def main_decode(self, codec, y_hat: Tensor, params: EntropyParams, options: Optional[Dict]) -> Tensor:
        k = _index(options, "shift_index", len(self.candidates))
        return y_hat + self.candidates[k] * self.direction(codec.quantizer, y_hat, params)

    # ------------------------------------------------------------------ side latent
    @torch.no_grad()
    def side_encode(self, codec, y: Tensor, z_hat: Tensor) -> Tuple[Tensor, Optional[int]]:
        """(shifted z_hat, chosen index or None when side shift is off) minimising the y bits."""
        if not self.side_active:
            return z_hat, None
        q = codec.quantizer
        if codec.autoregressive:
            raise ValueError("side-latent shift needs a hyperprior backbone: with a serial context model "
                             "each candidate's y rate needs its own serial pass; set side_candidates=[0]")
        g = side_rate_gradient(codec, z_hat)
        cands = torch.tensor(self.side_candidates, dtype=z_hat.dtype, device=z_hat.device)
        bits = []
        for c in cands.split(self.batch or len(cands)):
            zk = z_hat + c.view(-1, 1, 1, 1) * g
            yk = y.expand(len(c), *y.shape[1:])
            p = codec.params(codec.hyper(zk), like=yk)
            bits.append(-q.likelihood(q.hard(yk, p), p).log2().flatten(1).sum(1))
        k = int(torch.argmin(torch.cat(bits)))
        return z_hat + self.side_candidates[k] * g, k

    @torch.no_grad()
    def side_decode(self, codec, z_hat: Tensor, options: Optional[Dict]) -> Tensor:
        if not self.side_active:
            return z_hat
        k = _index(options, "side_shift_index", len(self.side_candidates))
        return z_hat + self.side_candidates[k] * side_rate_gradient(codec, z_hat)


class _Tiles:
    """Cut latent windows (with margin) and the matching image targets for candidate tests."""

    def __init__(self, corners, t: int, m: int, up: int):
        self.corners, self.t, self.m, self.up = corners, t, m, up
        self.crop = slice(m * up, (m + t) * up)

    def __call__(self, v: Tensor) -> Tensor:
        s = self.t + 2 * self.m
        return torch.cat([v[..., i : i + s, j : j + s] for i, j in self.corners], 0)

    def target(self, x: Tensor) -> Tensor:
        a, b = self.m * self.up, (self.m + self.t) * self.up
        return torch.cat([x[..., i * self.up + a : i * self.up + b, j * self.up + a : j * self.up + b]
                          for i, j in self.corners], 0)


# ---------------------------------------------------------------------------- diagnostics
def shift_gradient_correlation(codec, x: Tensor) -> float:
    """Pearson correlation of grad_{y_hat} -log p(y_hat | z_hat) and grad_{y_hat} D(x, g_s(y_hat))
    for one image (arXiv 2501.01231 fig. 3 and 6, with MSE: -0.1 ... -0.5 on trained codecs), D the
    codec's configured distortion, y_hat the eval walk's without the inference-time transforms
    (unshifted)."""
    if x.dim() != 4 or x.size(0) != 1:
        raise ValueError(f"shift_gradient_correlation takes one image (1, 3, H, W), got {tuple(x.shape)}")
    was_training = codec.training
    codec.eval()
    try:
        with torch.no_grad():
            out = codec.walk(Hard(codec.quantizer, inference=False), x)
        g_rate = rate_gradient(codec.quantizer, out.y_hat, out.params)
        view = codec.view
        with torch.enable_grad():
            v = out.y_hat.detach().requires_grad_(True)
            d = view.distortion(x, view.synthesize(v, x.shape[-2:]))[0]
            g_dist = torch.autograd.grad(d, v)[0]
    finally:
        codec.train(was_training)
    a, b = g_rate.flatten().double(), g_dist.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    den = (a.norm() * b.norm()).item()
    return float("nan") if den == 0 else float((a @ b).item() / den)

