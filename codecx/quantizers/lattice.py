"""Lattice vector quantization of Gaussian latents: Hex-Quant (A2), Oct-Quant (A3*) and D4.

Balcilar et al., arXiv 2501.01231 (sec. 3, appendices B, D.3, E, F): `u = y - means` is cut into groups of v
elements, each group is quantized to the nearest point of a unit-volume lattice
(Conway & Sloane 1982 closed forms, `lattice_math`), and the group's probability is the
mass of the product of its per-element Gaussians N(0, scale_i) on the point's Voronoi cell.

Grouping, at each spatial position (so serial context models can code position by position):

* ``"scale"`` (default; the paper's "sort by sigma"): the C channels are ordered by predicted
  scale, largest first (stable sort, ties keep channel order), and consecutive channels in
  that order form the groups, so each group's elements have alike scales.
* ``"channel"``: channels (0..v-1), (v..2v-1), ... form the groups.

When v does not divide C, the last ``C mod v`` channels of that order (for ``"scale"`` the
smallest scales, typically near-deterministic channels) are quantized as scalars (rounding,
1-D bin probabilities) -- nothing is padded, and every backbone width works.

Training: uniform noise over the Voronoi cell around `y` (the lattice analogue of additive
uniform noise), rate = -log of the Gaussian mass on the cell translated to the noisy point.
Eval: the nearest point, with its cell probability. `likelihoods` has `y`'s shape: each group
probability p is spread as p^(1/v) over its v elements, so sum(log) = sum over groups of
log p and `bits_per_pixel` is unchanged. Coding: :mod:`codecx.coding.lattice_coder`.

The quantizer has no parameters or buffers: any scalar-trained checkpoint loads unchanged
(`python eval.py ckpt=... quantizer=hex`). It needs a Gaussian (mean-)scale prior; the
factorized prior (bmshj_factorized) has no scales and is rejected with a clear error.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from compressai.entropy_models import GaussianConditional
from torch import Tensor

from codecx.coding import lattice_coder
from codecx.coding.scale_keys import check_rule
from codecx.quantizers.base import Quantizer
from codecx.lattice_math import IntegerLattice, cell_prob, get_lattice, sample_voronoi
from codecx.types import EntropyParams, QuantizerOutput

__all__ = ["LatticeQuantizer", "GROUPINGS"]

GROUPINGS = ("scale", "channel")
#: default `max_joint` per lattice: D4's box model is the least exact (boxes 1.68 x 0.84^3 against
#: its 24-cell), so its joint tables reach larger scales (real bits within 0.5% of the estimate)
MAX_JOINT = {"hex": 2048, "oct": 2048, "d4": 8192}
_Z1 = IntegerLattice(1)
_BOUND = 1e-9  # CompressAI's per-element likelihood lower bound (a group of v: _BOUND ** v)


def _needs_gaussian(what) -> ValueError:
    return ValueError(
        f"lattice quantizers need a Gaussian (mean-)scale prior to build cell probabilities; "
        f"{what} has none (the factorized prior, bmshj_factorized). Use a scalar quantizer "
        "(quantizer=noise/ste/mixed) or a hyperprior/context backbone.")


class LatticeQuantizer(Quantizer):
    """Quantize `y - means` in groups of v to the nearest lattice point (see module docstring).

    Args:
        lattice: "hex" (A2, v=2), "oct" (A3*, truncated octahedron cells, v=3) or "d4" (v=4).
        grouping: "scale" (sort channels by predicted scale) or "channel" (consecutive).
        order: Gauss-Legendre points per quadrature piece for the cell probabilities of the
            rate (default: the lattice's own, ~1e-5 relative accuracy).
        tail: coding drops symbols of probability below this (paper: 1e-7); the rest escape.
        max_joint: largest joint PMF table (symbols); groups with larger scales use the
            factorized box model (see `codecx.coding.lattice_coder`); None: `MAX_JOINT`.
        scale_levels: the scale table that keys the coder's PMF tables: None (default) the
            entropy model's own (the backbone's `scale_levels`, as the scalar coder), or
            CompressAI's N-level table (64: codecx's first lattice coder).
        scale_keys: which table scale keys a group's scales (`codecx.coding.scale_keys`): "up"
            (CompressAI's rule; the default, files written before issue 29) or "nearest" (the
            quantizer configs' choice: real bits within ~0.1% of the estimate).
    """

    scalar = False
    needs_gaussian_prior = True  # cell probabilities of a Gaussian (arXiv 2501.01231, eq. 2)

    def __init__(self, lattice: str = "hex", grouping: str = "scale", order: Optional[int] = None,
                 tail: float = 1e-7, max_joint: Optional[int] = None, scale_levels: Optional[int] = None,
                 scale_keys: str = "up"):
        super().__init__()
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping={grouping!r}: choose one of {', '.join(GROUPINGS)}")
        self.lattice_name = str(lattice)
        self.lattice = get_lattice(self.lattice_name)
        self.dim = self.lattice.dim
        self.grouping = grouping
        self.order = order
        self.tail = float(tail)
        self.max_joint = MAX_JOINT.get(self.lattice_name, 2048) if max_joint is None else int(max_joint)
        if scale_levels is not None and not 2 <= int(scale_levels) <= lattice_coder.MAX_KEY_LEVELS:
            raise ValueError(f"quantizer.scale_levels={scale_levels}: choose 2..{lattice_coder.MAX_KEY_LEVELS} "
                             "levels, or null for the model's own scale table")
        self.scale_levels = None if scale_levels is None else int(scale_levels)
        self.scale_keys = check_rule(scale_keys)

    def extra_repr(self) -> str:
        keys = "model" if self.scale_levels is None else self.scale_levels
        return (f"lattice={self.lattice_name!r}, grouping={self.grouping!r}, tail={self.tail:g}, "
                f"scale_levels={keys}, scale_keys={self.scale_keys!r}")

    # ------------------------------------------------------------------ grouping
    def permutation(self, scales: Tensor) -> Optional[Tensor]:
        """Channel order (..., C) of the groups for channel-last `scales`, None = identity."""
        if self.grouping == "channel":
            return None
        return torch.argsort(scales.detach(), dim=-1, descending=True, stable=True)

    def group(self, t: Tensor, perm: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Channel-last `t` (..., C) -> groups (..., C // v, v) and scalar remainder (..., C mod v)."""
        if perm is not None:
            t = t.gather(-1, perm)
        n = t.size(-1) // self.dim * self.dim
        return t[..., :n].unflatten(-1, (n // self.dim, self.dim)), t[..., n:]

    def ungroup(self, groups: Tensor, rest: Tensor, perm: Optional[Tensor]) -> Tensor:
        """Inverse of `group`: exactly the original channel order (..., C)."""
        t = torch.cat([groups.flatten(-2), rest], -1)
        if perm is None:
            return t
        inv = torch.empty_like(perm).scatter_(-1, perm, torch.arange(perm.size(-1), device=perm.device)
                                              .expand_as(perm).contiguous())
        return t.gather(-1, inv)

    # ------------------------------------------------------------------ shared pieces
    def _prepare(self, params: EntropyParams):
        """Lower-bounded channel-last scales, grouped as (S, S_rest), and the permutation."""
        if params.scales is None or not isinstance(params.entropy_model, GaussianConditional):
            raise _needs_gaussian(type(params.entropy_model).__name__)
        sc = params.entropy_model.lower_bound_scale(params.scales).movedim(1, -1)
        perm = self.permutation(sc)
        s, s_rest = self.group(sc, perm)
        return perm, s, s_rest

    def _assemble(self, k: Tensor, k_rest: Tensor, perm, means: Tensor) -> Tensor:
        """`y_hat` from lattice indices (..., n, v) and remainder integers (..., r)."""
        pts = self.lattice.from_index(k, means.dtype)
        t = self.ungroup(pts, k_rest.to(means.dtype), perm)
        return t.movedim(-1, 1) + means

    def _likelihoods(self, points: Tensor, rest: Tensor, s: Tensor, s_rest: Tensor, perm) -> Tensor:
        """Per-element likelihoods (group probability^(1/v)), channels first like `y`."""
        zero = torch.zeros((), dtype=points.dtype, device=points.device)
        p = cell_prob(self.lattice, points, zero, s, bound=_BOUND**self.dim, order=self.order)
        lik = torch.exp(p.log() / self.dim).unsqueeze(-1).expand(*p.shape, self.dim)
        lik_rest = cell_prob(_Z1, rest.unsqueeze(-1), zero, s_rest.unsqueeze(-1), bound=_BOUND)
        return self.ungroup(lik, lik_rest, perm).movedim(-1, 1)

    def _indices(self, y: Tensor, params: EntropyParams, perm) -> Tuple[Tensor, Tensor]:
        u, u_rest = self.group((y - params.means).movedim(1, -1), perm)
        return self.lattice.nearest_index(u), torch.round(u_rest.detach()).to(torch.int64)

    # ------------------------------------------------------------------ Quantizer API
    def forward(self, y: Tensor, params: EntropyParams) -> QuantizerOutput:
        perm, s, s_rest = self._prepare(params)
        if self.training:
            u, u_rest = self.group((y - params.means).movedim(1, -1), perm)
            noise = sample_voronoi(self.lattice, u.shape[:-1], dtype=u.dtype, device=u.device)
            pts = u + noise
            rest = u_rest + torch.empty_like(u_rest).uniform_(-0.5, 0.5)
            y_hat = self.ungroup(pts, rest, perm).movedim(-1, 1) + params.means
        else:
            k, k_rest = self._indices(y, params, perm)
            y_hat = self._assemble(k, k_rest, perm, params.means)
            pts, rest = self.lattice.from_index(k, y.dtype), k_rest.to(y.dtype)
        return QuantizerOutput(y_hat=y_hat, likelihoods=self._likelihoods(pts, rest, s, s_rest, perm))

    def likelihood(self, y_hat: Tensor, params: EntropyParams) -> Tensor:
        """Cell probabilities (per element, as in `forward`) of already quantized `y_hat`."""
        perm, s, s_rest = self._prepare(params)
        pts, rest = self.group((y_hat - params.means).movedim(1, -1), perm)
        return self._likelihoods(pts, rest, s, s_rest, perm)

    @torch.no_grad()
    def hard(self, y: Tensor, params: EntropyParams) -> Tensor:
        perm, _, _ = self._prepare(params)
        k, k_rest = self._indices(y, params, perm)
        return self._assemble(k, k_rest, perm, params.means)

    def open_encoder(self, entropy_model) -> "lattice_coder.LatticeStreamEncoder":
        if not isinstance(entropy_model, GaussianConditional):
            raise _needs_gaussian(type(entropy_model).__name__)
        return lattice_coder.LatticeStreamEncoder(entropy_model, self.lattice, self.tail, self.max_joint,
                                                  self.scale_levels, self.scale_keys)

    @torch.no_grad()
    def encode(self, stream, y: Tensor, params: EntropyParams) -> Tensor:
        perm, s, s_rest = self._prepare(params)
        k, k_rest = self._indices(y, params, perm)
        stream.put(k.reshape(-1, self.dim), s.reshape(-1, self.dim), k_rest.reshape(-1), s_rest.reshape(-1))
        return self._assemble(k, k_rest, perm, params.means)

    def open_decoder(self, entropy_model, data: bytes) -> "lattice_coder.LatticeStreamDecoder":
        if not isinstance(entropy_model, GaussianConditional):
            raise _needs_gaussian(type(entropy_model).__name__)
        return lattice_coder.LatticeStreamDecoder(entropy_model, self.lattice, data, self.tail, self.max_joint,
                                                  self.scale_levels, self.scale_keys)

    @torch.no_grad()
    def decode(self, stream, params: EntropyParams) -> Tensor:
        perm, s, s_rest = self._prepare(params)
        k, k_rest = stream.get(s.reshape(-1, self.dim), s_rest.reshape(-1))
        dev = params.means.device
        return self._assemble(k.reshape(s.shape).to(dev), k_rest.reshape(s_rest.shape).to(dev), perm,
                              params.means)
