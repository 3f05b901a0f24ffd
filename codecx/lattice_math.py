"""Pure math of lattice vector quantization: A2 (Hex-Quant), A3* (Oct-Quant) and D4.

Nearest points follow Conway & Sloane, "Fast quantizing and decoding algorithms for lattice
quantizers and codes" (IEEE T-IT 1982). Cell probabilities, the mass a product of Gaussians
puts on a Voronoi cell (eq. 2 and appendix E of arXiv 2501.01231, Hex-Quant/Oct-Quant), are
exact on axis-aligned box parts of the cell, and elsewhere use an erf innermost integral
with Gauss-Legendre quadrature outside, in a Gaussian CDF change of variables (Genz 1992).
Every lattice is scaled to unit cell volume. Tensors are (..., v), float32 or float64.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from compressai.ops.bound_ops import LowerBoundFunction
from torch import Tensor

__all__ = [
    "Lattice", "IntegerLattice", "HexLattice", "OctLattice", "D4Lattice", "LATTICES", "get_lattice",
    "normalized_second_moment", "sample_voronoi", "cell_prob", "cell_log_prob", "Support", "support",
    "support_radius", "support_size", "OffsetIndex",
]

_SQRT3 = math.sqrt(3.0)
_WINDOW = 8.5  # half-width of the outer quadrature windows, in standard deviations
_WIDEN = 3.0  # width of the node-placing Gaussian, in standard deviations


# ---------------------------------------------------------------------------- 1-D Gaussian pieces
def _phi(t: Tensor) -> Tensor:
    """Standard normal CDF via erfc (accurate in the lower tail)."""
    return 0.5 * torch.erfc(-t * math.sqrt(0.5))


def _mass(lo, hi, d: Tensor, s: Tensor) -> Tensor:
    """P(lo <= X <= hi) for X ~ N(d, s), evaluated in the lower tail as CompressAI does."""
    a, b = (lo - d) / s, (hi - d) / s
    up = a + b > 0
    return (_phi(torch.where(up, -a, b)) - _phi(torch.where(up, -b, a))).clamp_min(0)


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on (0, 1)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def _nodes(lo, hi, d: Tensor, s: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """Nodes c (..., n) and weights w with sum_k w_k f(c_k) ~ int_lo^hi N(c; d, s) f(c) dc.

    [lo, hi] is clipped to d +- 8.5 s (beyond, N < 1e-16) and Gauss-Legendre is applied in
    u = Phi((c - d) / (3 s)) (Genz 1992 with a 3x wider Gaussian: nodes follow the mass yet
    still cover the tail, where the mass of cells away from the mean lies); the weights carry
    N / N_wide. Windows above the mean are reflected into the lower tail for float32.
    """
    x, w = (torch.as_tensor(v, dtype=d.dtype, device=d.device) for v in _gauss_legendre(n))
    q = _WIDEN * s
    a = (torch.maximum(torch.as_tensor(lo, dtype=d.dtype, device=d.device), d - _WINDOW * s) - d) / q
    b = torch.maximum((torch.minimum(torch.as_tensor(hi, dtype=d.dtype, device=d.device), d + _WINDOW * s) - d) / q, a)
    up = a + b > 0
    a, b = torch.where(up, -b, a).unsqueeze(-1), torch.where(up, -a, b).unsqueeze(-1)
    pa = _phi(a)
    m = (_phi(b) - pa).clamp_min(0)
    u = (pa + m * x).clamp(torch.finfo(d.dtype).tiny, 1 - torch.finfo(d.dtype).eps)
    t = torch.minimum(torch.maximum(torch.special.ndtri(u), a), b)
    c = d.unsqueeze(-1) + q.unsqueeze(-1) * torch.where(up.unsqueeze(-1), -t, t)
    return c, m * w * _WIDEN * torch.exp((0.5 - 0.5 * _WIDEN**2) * t * t)


# ---------------------------------------------------------------------------- lattices
class Lattice:
    """A lattice scaled to unit Voronoi-cell volume (Conway & Sloane 1982 nearest-point search)."""

    name: str = ""
    dim: int = 0
    basis: Tuple[Tuple[float, ...], ...] = ()  # unscaled generator rows
    covering: float = 0.0  # covering radius of the unscaled lattice
    nsm: float = 0.0  # normalized second moment (Conway & Sloane, SPLAG table 2.3)
    order: int = 8  # default Gauss-Legendre points per quadrature piece

    def __init__(self):
        g = torch.tensor(self.basis, dtype=torch.float64)
        self.scale = abs(torch.linalg.det(g).item()) ** (-1.0 / self.dim)
        self.generator = g * self.scale  # rows are basis vectors, det 1
        self._inv0, self._inv = torch.linalg.inv(g), torch.linalg.inv(self.generator)
        self.covering_radius = self.covering * self.scale

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"

    def _nearest0(self, x: Tensor) -> Tensor:
        """Nearest point of the unscaled lattice (same float dtype)."""
        raise NotImplementedError

    def _cell_prob0(self, d: Tensor, s: Tensor, n: int) -> Tensor:
        """Mass of N(d, diag s^2) on the unscaled Voronoi cell at the origin, shape (...)."""
        raise NotImplementedError

    def nearest_index(self, x: Tensor) -> Tensor:
        """Basis coordinates (int64) of the lattice point nearest each row of `x` (..., v)."""
        q = self._nearest0(x.detach() / self.scale)
        return torch.round(q.double() @ self._inv0.to(q.device)).long()

    def nearest(self, x: Tensor) -> Tensor:
        """Nearest lattice point, bitwise equal to `from_index(to_index(.))` (decoder-exact)."""
        return self.from_index(self.nearest_index(x), x.dtype)

    def to_index(self, points: Tensor) -> Tensor:
        """Integer basis coordinates of lattice points (..., v) -> int64 (..., v)."""
        return torch.round(points.double() @ self._inv.to(points.device)).long()

    def from_index(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Lattice points `index @ generator` (..., v), computed in float64 then cast."""
        return (index.double() @ self.generator.to(index.device)).to(dtype)


class IntegerLattice(Lattice):
    """Z^n, the scalar-quantization baseline (cell probability = product of 1-D bins)."""

    def __init__(self, n: int):
        self.name, self.dim, self.covering, self.nsm = f"z{n}", n, math.sqrt(n) / 2, 1 / 12
        self.basis = tuple(tuple(float(i == j) for j in range(n)) for i in range(n))
        super().__init__()

    def _nearest0(self, x):
        return torch.round(x)

    def _cell_prob0(self, d, s, n):
        return _mass(-0.5, 0.5, d, s).prod(-1)


def _nearest_cosets(x: Tensor, step: Tuple[float, ...], offsets) -> Tensor:
    """Nearest point of a union of cosets `off + step * Z^n` (Conway & Sloane 1982, sec. 3)."""
    st = x.new_tensor(step)
    best: Optional[Tensor] = None
    dist = x.new_zeros(())
    for off in offsets:
        o = x.new_tensor(off)
        p = torch.round((x - o) / st) * st + o
        e = (x - p).square().sum(-1, keepdim=True)
        best, dist = (p, e) if best is None else (torch.where(e < dist, p, best), torch.minimum(e, dist))
    assert best is not None, "no coset offsets"
    return best


def _nearest_dn(x: Tensor) -> Tensor:
    """Nearest point of D_n: round, and if the sum is odd re-round the worst coordinate (C&S 1982)."""
    f = torch.round(x)
    delta = x - f
    k = delta.abs().argmax(-1, keepdim=True)
    step = torch.where(delta.gather(-1, k) >= 0, 1.0, -1.0).to(x.dtype)
    odd = torch.remainder(f.sum(-1, keepdim=True), 2) != 0
    return f.scatter_add(-1, k, step * odd)


class HexLattice(Lattice):
    """A2, the hexagonal lattice of Hex-Quant (arXiv 2501.01231, sec. 3; C&S 1982 cosets of a rectangle).

    Unscaled: rows (1, 0), (1/2, sqrt(3)/2); cell |c1| <= 1/2, |c2| <= (1 - |c1|) / sqrt(3)
    (the hexagon has vertical edges; the paper's figure 5a is the same hexagon turned 90 degrees).
    """

    name, dim, covering, nsm, order = "hex", 2, 1 / _SQRT3, 5 / (36 * _SQRT3), 16
    basis = ((1.0, 0.0), (0.5, _SQRT3 / 2))

    def _nearest0(self, x):
        return _nearest_cosets(x, (1.0, _SQRT3), [(0.0, 0.0), (0.5, _SQRT3 / 2)])

    def _cell_prob0(self, d, s, n):
        # arXiv 2501.01231 appendix E, erf inside and quadrature outside, on rectangle + two caps:
        # the rectangle |c1| <= 1/2, |c2| <= 1/(2 sqrt3) is exact, the caps have |c1| <= 1 - sqrt3 |c2|
        (d1, d2), (s1, s2) = d.unbind(-1), s.unbind(-1)
        k = 1 / _SQRT3
        p = _mass(-0.5, 0.5, d1, s1) * _mass(-k / 2, k / 2, d2, s2)
        for lo, hi in ((-k, -k / 2), (k / 2, k)):
            c, w = _nodes(lo, hi, d2, s2, n)
            h = 1 - _SQRT3 * c.abs()
            p = p + (w * _mass(-h, h, d1.unsqueeze(-1), s1.unsqueeze(-1))).sum(-1)
        return p


class OctLattice(Lattice):
    """A3* = BCC = Z^3 u (Z^3 + 1/2), truncated-octahedron cells (Oct-Quant, arXiv 2501.01231; C&S 1982).

    Unscaled cell: |c_i| <= 1/2 and |c1| + |c2| + |c3| <= 3/4.
    """

    name, dim, covering, nsm, order = "oct", 3, math.sqrt(5) / 4, 0.0785432, 8
    basis = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.5))

    def _nearest0(self, x):
        return _nearest_cosets(x, (1.0, 1.0, 1.0), [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5)])

    def _cell_prob0(self, d, s, n):
        # outer c1 (the narrowest, the cell being symmetric under permutations); the section
        # {|c2|, |c3| <= 1/2, |c2| + |c3| <= r}, r = 3/4 - |c1|, is for r >= 1/2 the box
        # |c2| <= 1/2, |c3| <= r - 1/2 (exact) plus two caps in c3, and for r < 1/2 a diamond
        s, perm = s.sort(-1)
        (d1, d2, d3), (s1, s2, s3) = d.gather(-1, perm).unbind(-1), s.unbind(-1)
        d2, s2, d3, s3 = d2[..., None, None], s2[..., None, None], d3.unsqueeze(-1), s3.unsqueeze(-1)
        p = 0
        for lo, hi in ((-0.5, -0.25), (-0.25, 0.0), (0.0, 0.25), (0.25, 0.5)):
            c1, w1 = _nodes(lo, hi, d1, s1, n)
            r = 0.75 - c1.abs()
            if -0.25 <= lo and hi <= 0.25:
                e = r - 0.5
                inner = _mass(-0.5, 0.5, d2[..., 0], s2[..., 0]) * _mass(-e, e, d3, s3)
                pieces = ((-0.5, -e), (e, 0.5))
            else:
                inner, pieces = 0, ((-r, 0 * r), (0 * r, r))
            for lo3, hi3 in pieces:
                c3, w3 = _nodes(lo3, hi3, d3, s3, n)
                h = r.unsqueeze(-1) - c3.abs()
                inner = inner + (w3 * _mass(-h, h, d2, s2)).sum(-1)
            p = p + (w1 * inner).sum(-1)
        return p


class D4Lattice(Lattice):
    """D4 = {x in Z^4 : sum even} (checkerboard; C&S 1982 'round and fix the worst coordinate').

    Unscaled cell (24-cell): |c_i| + |c_j| <= 1, i.e. the cube [-1/2, 1/2]^4 plus 8 pyramids.
    """

    name, dim, covering, nsm, order = "d4", 4, 1.0, 0.0766032, 12
    basis = ((2.0, 0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0), (1.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 1.0))

    def _nearest0(self, x):
        return _nearest_dn(x)

    def _cell_prob0(self, d, s, n):
        # cube exactly; pyramid i+: 1/2 <= c_i <= 1 with |c_j| <= 1 - c_i for j != i (a box)
        box = _mass(-0.5, 0.5, d, s).prod(-1)
        lo = d.new_tensor([0.5, -1.0]).expand(*d.shape, 2)
        c, w = _nodes(lo, lo + 0.5, d.unsqueeze(-1), s.unsqueeze(-1), n)  # (..., 4, 2, n)
        h = (1 - c.abs()).unsqueeze(-1)  # (..., i, side, n, 1)
        m = _mass(-h, h, d[..., None, None, None, :], s[..., None, None, None, :])  # (..., i, side, n, j)
        eye = torch.eye(4, dtype=torch.bool, device=d.device)[:, None, None, :]
        return box + (w * torch.where(eye, 1.0, m).prod(-1)).sum((-1, -2, -3))


LATTICES: Dict[str, Lattice] = {"hex": HexLattice(), "oct": OctLattice(), "d4": D4Lattice()}


def get_lattice(name: str) -> Lattice:
    """The lattice called `name`: 'hex' (A2), 'oct' (A3*), 'd4' (D4), or 'z1'..'z4' (Z^n)."""
    if name in LATTICES:
        return LATTICES[name]
    if name in ("z1", "z2", "z3", "z4"):
        return IntegerLattice(int(name[1]))
    raise KeyError(f"unknown lattice {name!r}; options: {sorted(LATTICES)} or 'z1'..'z4' (Z^n)")


# ---------------------------------------------------------------------------- noise and NSM
def _cell_uniform(lattice: Lattice, u: Tensor) -> Tensor:
    """Map uniform samples of [0, 1)^v (fundamental parallelepiped) into the Voronoi cell."""
    x = u @ lattice.generator.to(u)
    return x - lattice.nearest(x)


def sample_voronoi(lattice: Lattice, shape, *, dtype=torch.float32, device=None, generator=None) -> Tensor:
    """Uniform noise over the Voronoi cell, shape (*shape, v): the lattice training relaxation."""
    u = torch.rand(*shape, lattice.dim, dtype=torch.float64, device=device, generator=generator)
    return _cell_uniform(lattice, u).to(dtype)


def normalized_second_moment(lattice: Lattice, n_samples: int = 1 << 17, seed: int = 0) -> float:
    """Scrambled-Sobol estimate of G = E|e|^2 / (v V^(2/v)) with V = 1 (C&S SPLAG ch. 2)."""
    u = torch.quasirandom.SobolEngine(lattice.dim, scramble=True, seed=seed).draw(n_samples, dtype=torch.float64)
    return _cell_uniform(lattice, u).square().sum(-1).mean().item() / lattice.dim


# ---------------------------------------------------------------------------- cell probabilities
def cell_prob(lattice: Lattice, points: Tensor, means: Tensor, scales: Tensor, *,
              bound: Optional[float] = 1e-9, order: Optional[int] = None) -> Tensor:
    """Mass of prod_i N(means_i, scales_i) on the cell of each point (eq. 2 of arXiv 2501.01231), shape (...).

    Differentiable in means and scales; lower-bounded at `bound` with CompressAI's gradient
    rule (None: no bound). `points` need not be lattice points (cell translated anywhere).
    `order` (Gauss-Legendre points per piece, default `lattice.order`) trades speed for
    accuracy: the defaults reach ~1e-5 relative (float32 rounding) for scales 0.05 to 50.
    """
    d = (means - points.to(means.dtype)) / lattice.scale
    s = (scales / lattice.scale).to(d.dtype)
    d, s = torch.broadcast_tensors(d, s)
    p = lattice._cell_prob0(d, s, order or lattice.order)
    return p if bound is None else LowerBoundFunction.apply(p, p.new_tensor(bound))


def cell_log_prob(lattice: Lattice, points: Tensor, means: Tensor, scales: Tensor, *,
                  bound: Optional[float] = 1e-9, order: Optional[int] = None) -> Tensor:
    """log of `cell_prob` (the training rate term is -sum cell_log_prob / ln 2 bits)."""
    return cell_prob(lattice, points, means, scales, bound=bound, order=order).log()


# ---------------------------------------------------------------------------- coding support
# One implementation of the truncated symbol alphabets (arXiv 2501.01231, appendix D.3): `support` here,
# used as it is by the entropy coder's joint tables (codecx.coding.lattice_coder), whose symbols
# are the candidates' positions as `OffsetIndex` finds them.
def _ball_size(lattice: Lattice, radius: Union[float, Tensor]) -> Union[float, Tensor]:
    """Expected number of points of a unit-volume lattice in a ball of `radius`."""
    v = lattice.dim
    return math.pi ** (v / 2) / math.gamma(v / 2 + 1) * radius**v


@functools.lru_cache(maxsize=32)
def _ball(lattice: Lattice, radius: float) -> Tensor:
    """Index offsets (K, v) of the lattice points within `radius` of 0, sorted by norm."""
    b = [math.ceil(radius * c) for c in lattice._inv.norm(dim=0).tolist()]
    grid = torch.cartesian_prod(*[torch.arange(-r, r + 1) for r in b]).reshape(-1, lattice.dim)
    norm = lattice.from_index(grid, torch.float64).norm(dim=-1)
    keep = norm <= radius + 1e-9
    return grid[keep][torch.argsort(norm[keep], stable=True)]


def support_radius(lattice: Lattice, max_scale, tail: float = 1e-7):
    """z * max_scale + 2 x covering radius, z = Phi^-1(1 - tail): every cell of mass >= `tail`
    under a Gaussian of largest scale `max_scale` lies within it of the point nearest the mean
    (half-space bound). `max_scale` may be a float or a tensor (one radius per entry)."""
    z = -torch.special.ndtri(torch.tensor(tail, dtype=torch.float64)).item()
    return z * max_scale + 2 * lattice.covering_radius


def support_size(lattice: Lattice, max_scale, tail: float = 1e-7):
    """About how many candidates `support` examines for a largest scale `max_scale` (a float,
    or a tensor: one size per entry)."""
    r = support_radius(lattice, max_scale, tail)
    return _ball_size(lattice, r if isinstance(r, Tensor) else float(r))


class OffsetIndex:
    """Positions of index offsets in a fixed list `offsets` (K, v): mixed-radix integer keys and
    a binary search (the symbol of a lattice point in a truncated alphabet)."""

    def __init__(self, offsets: Tensor):
        self.size = len(offsets)
        self.bound = int(offsets.abs().max()) if self.size else 0
        self.radix = (2 * self.bound + 1) ** torch.arange(offsets.size(-1), dtype=torch.int64,
                                                          device=offsets.device)
        self.keys, self.order = ((offsets + self.bound) * self.radix).sum(-1).sort()

    def find(self, rel: Tensor) -> Tuple[Tensor, Tensor]:
        """(position k (...,) of each offset `rel` (..., v) in the list, 0 where absent; found (...,))."""
        b = self.bound
        q = ((rel + b).clamp(0, 2 * b) * self.radix).sum(-1)
        pos = torch.searchsorted(self.keys, q).clamp(max=self.size - 1)
        found = (self.keys[pos] == q) & (rel.abs() <= b).all(-1)
        return torch.where(found, self.order[pos], 0), found


@dataclass
class Support:
    """Truncated per-group symbol alphabets: candidates `index = center + offsets` (G, K, v),
    their cell probabilities `prob` (G, K) and `valid = prob >= tail` (arXiv 2501.01231 drops symbols
    below 1e-7). `prob` is not renormalised: the coder quantizes it into a CDF and reserves an
    escape for the points `locate` flags (or clips them to a valid candidate).
    """

    lattice: Lattice
    center: Tensor  # (G, v) int64, index of the lattice point nearest each mean
    offsets: Tensor  # (K, v) int64, shared index offsets, sorted by norm (k = 0: the center)
    prob: Tensor  # (G, K), 0 where not valid
    valid: Tensor  # (G, K) bool

    @property
    def index(self) -> Tensor:
        """Lattice indices of the candidates, (G, K, v) int64."""
        return self.center.unsqueeze(1) + self.offsets

    @functools.cached_property
    def lookup(self) -> OffsetIndex:
        """Position of an offset among `offsets` (the symbol of a point)."""
        return OffsetIndex(self.offsets)

    def locate(self, index: Tensor, clip: bool = False) -> Tuple[Tensor, Tensor]:
        """Position k (G,) of lattice `index` (G, v) among the candidates, and `escaped` (G,).

        Escaped points (beyond the offsets, or of probability < tail) get k = 0, or with `clip`
        the valid candidate nearest to them, which the caller codes instead (no escape symbol,
        extra distortion).
        """
        k, found = self.lookup.find(index - self.center)
        escaped = ~(found & self.valid.gather(1, k.unsqueeze(1)).squeeze(1))
        if clip and bool(escaped.any()):
            pts = self.lattice.from_index(self.index, torch.float64)
            dist = (pts - self.lattice.from_index(index, torch.float64).unsqueeze(1)).square().sum(-1)
            k = torch.where(escaped, dist.masked_fill(~self.valid, math.inf).argmin(1), k)
        return k, escaped


@torch.no_grad()
def support(lattice: Lattice, scales: Tensor, means: Optional[Tensor] = None, *, tail: float = 1e-7,
            radius: Optional[float] = None, max_points: int = 100_000, order: Optional[int] = None,
            chunk: int = 1 << 15) -> Support:
    """Candidate symbols of cell probability >= `tail` for groups with `scales`, `means` (G, v).

    Offsets are the lattice points within `radius` of the point nearest each mean (default
    zero means: the coder quantizes y - means; default radius `support_radius`), sorted by norm.
    Quadrature (`cell_prob`, `order` points per piece) runs only on points whose box of +-covering
    radius, which holds their cell, has Gaussian mass >= `tail` (an upper bound of the cell's:
    the ellipsoid of likely points, not the whole ball). K is then pruned to the offsets valid
    for some group; the nearest point (k = 0) always stays. Large scales give huge K
    (~ (z sigma)^v): bucket groups by scale, or pass a smaller `radius` and escape the rest.
    """
    means = torch.zeros_like(scales) if means is None else means
    if radius is None:
        radius = support_radius(lattice, scales.max().item(), tail)
    if _ball_size(lattice, radius) > 1.2 * max_points:
        raise ValueError(f"~{_ball_size(lattice, radius):.0f} candidates within radius {radius:.2f} > max_points="
                         f"{max_points}: bucket groups by scale, or pass a smaller radius and escape the rest")
    offsets = _ball(lattice, round(float(radius), 6)).to(scales.device)
    center = lattice.nearest_index(means)
    r = lattice.covering_radius
    prob = scales.new_zeros(len(scales), len(offsets))
    g = max(1, chunk // len(offsets))
    for i in range(0, len(scales), g):
        pts = lattice.from_index(center[i:i + g].unsqueeze(1) + offsets, scales.dtype)  # (g, K, v)
        mu = means[i:i + g].unsqueeze(1).expand_as(pts)
        sd = scales[i:i + g].unsqueeze(1).expand_as(pts)
        cand = _mass(pts - r, pts + r, mu, sd).prod(-1) >= tail
        cand[:, 0] = True
        prob[i:i + g][cand] = cell_prob(lattice, pts[cand], mu[cand], sd[cand], bound=None, order=order).to(prob.dtype)
    valid = prob >= tail
    keep = valid.any(0)
    keep[0] = True  # the nearest point always stays, so k = 0 exists
    return Support(lattice, center, offsets[keep], torch.where(valid, prob, 0)[:, keep], valid[:, keep])
