"""Entropy coding of lattice symbols (Hex-/Oct-Quant, arXiv 2501.01231 sec. 3.2) with `constriction`.

A group of v latents `u = y - means ~ prod_i N(0, sigma_i)` is quantized to the nearest point
`k @ G` of a unit-volume lattice (integer basis coordinates `k`, generator rows `G`). The
coder writes `k` into one range-coded stream (constriction's queue `RangeEncoder`: first in,
first out, so serial context models can code position by position). Two models:

* **joint** (the paper's PMF tables): a categorical over the lattice points whose Voronoi
  cell carries mass >= `tail` (1e-7, appendix D.3; `lattice_math.support` of a zero-mean group,
  symbols = positions in its alphabet), plus one escape symbol. Tables are keyed by the
  scales mapped to a scale table by the rule the scalar coder uses (`scale_keys`,
  `codecx.coding.scale_keys`: "up", CompressAI's `build_indexes`, the first table scale >= the
  scale; "nearest", the nearest in log, the configs' choice since issue 29, which removes the
  first-order excess of real over estimated bits): by default the entropy model's own
  `scale_table` (the backbone's `scale_levels`, the table the scalar coder uses, so lattice
  and scalar coding differ only in the quantizer), or CompressAI's N-level table
  (`key_table(gc, N)`; 64: the tables of codecx's first lattice coder). Tables are computed once
  in float64 and cached per process; encoder and decoder build them from the same table
  scales, so they agree bit for bit. The table is not written into the stream: it follows
  from the model's config and state and the quantizer's config, which the container's
  fingerprint covers, so a decoder with another table refuses the file.
* **box** (for groups whose table would exceed `max_joint` symbols: scales large against the
  cell): the lattice generators here are lower triangular, so the skewed boxes
  `prod_i [x_i - G_ii/2, x_i + G_ii/2]` centred on the lattice points tile space; their
  Gaussian masses are an exact distribution over the lattice points that factorizes into
  1-D quantized Gaussians coded coordinate by coordinate (k_v first, then k_{v-1} given it,
  ...). For sigma >> cell size it equals the Voronoi masses up to second order (negligible
  rate cost); it uses the exact (unrounded) scales. The scalar remainder of a grouping
  (C mod v channels) is the 1-D case of this path (the Z lattice, where boxes are exact).

Escapes: a point outside its joint table codes the table's escape symbol (probability: the
dropped mass, at least 2^-12, a little robustness to scales that are too small) and is then
coded with the box model (exact scales), after
all joint groups; in the box path a coordinate beyond +-B codes +-(B+1) then the integer as
two 16-bit uniform words. So every point is codable, and an improbable point costs about
its box-model bits plus the escape (~20 bits), not a fixed-width payload.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Tuple

import constriction
import numpy as np
import torch
from compressai.models.google import get_scale_table
from torch import Tensor

from codecx.coding.scale_keys import check_rule, key_indexes
from codecx.lattice_math import Lattice, support, support_size

__all__ = ["LatticeTables", "LatticeStreamEncoder", "LatticeStreamDecoder", "Z1_GENERATOR", "key_table"]

_queue = constriction.stream.queue
_model = constriction.stream.model
_WORD = _model.Uniform(1 << 16)
_BIAS = 1 << 31
Z1_GENERATOR = torch.ones(1, 1, dtype=torch.float64)
_ESCAPE_FLOOR = 2.0**-12  # escape probability floor: 12 bits per escape, 3.5e-4 bits per other symbol
#: CompressAI's default scale table (64 levels, 0.11 .. 256): the keys of the first lattice coder
KEY_SCALES = get_scale_table()
_TABLE_ORDER = 3  # Gauss-Legendre points per piece for the tables (KL to exact < 1e-5 bits/symbol)
MAX_KEY_LEVELS = 1 << 15  # a group's key is one int64 in radix levels (v <= 4)


def key_table(gaussian_conditional, scale_levels: Optional[int] = None) -> Tensor:
    """The scale table (L,) float32 that keys the joint PMF tables: the entropy model's own
    `scale_table` (None: the table of its scalar CDFs, built by `update()`), or CompressAI's
    `get_scale_table(levels=scale_levels)` (0.11 .. 256, log-spaced; 64: CompressAI's default)."""
    if scale_levels is None:
        table = getattr(gaussian_conditional, "scale_table", None)
        if table is None or table.numel() < 2:
            raise ValueError("lattice coding keys its PMF tables on the entropy model's scale table, "
                             "which is not built yet: call codec.update(force=True) before coding "
                             "(or set the quantizer's scale_levels)")
        table = table.detach().cpu().float()
    else:
        levels = int(scale_levels)
        if not 2 <= levels <= MAX_KEY_LEVELS:
            raise ValueError(f"quantizer.scale_levels={scale_levels}: choose 2..{MAX_KEY_LEVELS} levels "
                             "(or null: the model's own scale table)")
        table = get_scale_table(levels=levels).float()
    if len(table) > MAX_KEY_LEVELS or not bool((table[1:] > table[:-1]).all()):
        raise ValueError(f"the scale table must increase strictly and have at most {MAX_KEY_LEVELS} "
                         f"levels, got {len(table)} levels")
    return table.contiguous()


# ---------------------------------------------------------------------------- escape payloads
def _put_ints(enc, values: Tensor) -> None:
    """Code int64 `values` (any count) as two 16-bit uniform words each."""
    if values.numel() == 0:
        return
    v = values.reshape(-1).to(torch.int64)
    if bool((v < -_BIAS).any() or (v >= _BIAS).any()):
        raise ValueError(f"lattice coordinate {int(v.abs().max())} does not fit in 32 bits")
    u = (v + _BIAS).numpy()
    words = np.stack([u >> 16, u & 0xFFFF], -1).reshape(-1).astype(np.int32)
    enc.encode(words, _WORD)


def _get_ints(dec, n: int) -> Tensor:
    """Read back `n` integers written by `_put_ints`."""
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    w = dec.decode(_WORD, 2 * n).astype(np.int64).reshape(n, 2)
    return torch.from_numpy((w[:, 0] << 16) | w[:, 1]) - _BIAS


# ---------------------------------------------------------------------------- joint tables
_CODE_BOUND = 63  # index offsets within +-63 per coordinate have a lookup code (farther: escape)
_CODE_RADIX = 2 * _CODE_BOUND + 1


def _codes(index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mixed-radix codes (n,) of index offsets (n, v), and whether each is within the bound."""
    inside = (np.abs(index) <= _CODE_BOUND).all(-1)
    radix = _CODE_RADIX ** np.arange(index.shape[-1], dtype=np.int64)
    return ((np.clip(index, -_CODE_BOUND, _CODE_BOUND) + _CODE_BOUND) * radix).sum(-1), inside


class _Table:
    """The alphabet of one table key (`lattice_math.support` of one zero-mean group: candidates
    (K, v)) and its categorical model (K + 1 symbols: escape last)."""

    def __init__(self, offsets: Tensor, prob: Tensor, tail: float):
        self.offsets_np = offsets.numpy().astype(np.int32)  # compact: the cache holds millions
        self.size = len(offsets)
        esc = max(1.0 - float(prob.sum()), _ESCAPE_FLOOR)
        self.model = _model.Categorical(np.append(prob.numpy().astype(np.float64), esc), perfect=False)
        codes, inside = _codes(self.offsets_np.astype(np.int64))
        codes = np.where(inside, codes, -1)  # an offset beyond the code bound is never found: it escapes
        self.code_sym = np.argsort(codes, kind="stable").astype(np.int32)  # symbols by code
        self.codes = codes[self.code_sym]

    @property
    def offsets(self) -> Tensor:
        """The alphabet: index offsets (K, v) int64, symbol = row."""
        return torch.from_numpy(self.offsets_np).to(torch.int64)

    def symbols(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        """Symbol (n,) of each lattice index (n, v), escape = K, and the escape mask."""
        sym, esc = _symbols([self], np.array([len(index)]), index.numpy())
        return torch.from_numpy(sym), torch.from_numpy(esc)


def _symbols(tables, counts: np.ndarray, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Symbols (n,) int64 and escape mask (n,) of the indices (n, v) of consecutive blocks of
    `counts` rows, block u looked up in `tables[u]`: one binary search for all blocks."""
    span = _CODE_RADIX ** index.shape[-1]
    sizes = np.array([t.size for t in tables], dtype=np.int64)
    cat = np.concatenate([t.codes for t in tables]) + np.repeat(np.arange(len(tables), dtype=np.int64) * span, sizes)
    cat_sym = np.concatenate([t.code_sym for t in tables])
    block = np.repeat(np.arange(len(tables), dtype=np.int64), counts)
    codes, inside = _codes(index)
    q = block * span + codes
    pos = np.minimum(np.searchsorted(cat, q), len(cat) - 1)
    found = inside & (cat[pos] == q)
    return np.where(found, cat_sym[pos], np.repeat(sizes, counts)), ~found


class LatticeTables:
    """Per-process cache of joint tables: key = table scales of a group (float tuple)."""

    _cache: "OrderedDict[tuple, _Table]" = OrderedDict()
    _cached_symbols = 0
    MAX_CACHED_SYMBOLS = 8_000_000  # ~40 bytes each; D4 on the 24 Kodak images builds 6.6M

    def __init__(self, lattice: Lattice, tail: float = 1e-7, max_joint: int = 2048):
        self.lattice, self.tail, self.max_joint = lattice, float(tail), int(max_joint)
        self._z = -torch.special.ndtri(torch.tensor(self.tail, dtype=torch.float64)).item()

    def joint(self, sigma: Tensor) -> Tensor:
        """Which table keys (n, v) float64 use the joint model (their table is small enough)."""
        return support_size(self.lattice, sigma.max(-1).values, self.tail) <= self.max_joint

    def get(self, sigma: Tuple[float, ...]) -> _Table:
        """The joint table for table scales `sigma` (computed once, in float64)."""
        key = (self.lattice.name, self.tail, sigma)
        cache = LatticeTables._cache
        t = cache.get(key)
        if t is not None:
            cache.move_to_end(key)
            return t
        threads = torch.get_num_threads()
        try:  # many small tensor ops: intra-op threads only add contention (10x slower when busy)
            torch.set_num_threads(1)
            t = self._build(torch.tensor(sigma, dtype=torch.float64))
        finally:
            torch.set_num_threads(threads)
        cache[key] = t
        LatticeTables._cached_symbols += t.size
        while LatticeTables._cached_symbols > self.MAX_CACHED_SYMBOLS and len(cache) > 1:
            _, old = cache.popitem(last=False)
            LatticeTables._cached_symbols -= old.size
        return t

    def _build(self, s: Tensor) -> _Table:
        """The points of cell mass >= tail under N(0, diag s^2): `lattice_math.support` of one
        zero-mean group, with `_TABLE_ORDER` quadrature points (the origin always has a symbol)."""
        sup = support(self.lattice, s.unsqueeze(0), tail=self.tail, order=_TABLE_ORDER)
        return _Table(sup.offsets, sup.prob[0], self.tail)


def _box_bound(std: Tensor, z: float) -> Tensor:
    """Symbol range +-B (a power of two >= z std + 2) of each box-path coordinate."""
    return torch.exp2(torch.ceil(torch.log2(z * std + 2))).clamp_min(2).to(torch.int64)


_QG: Dict[int, object] = {}


def _qgauss(b: int):
    """constriction's quantized Gaussian family over [-b-1, b+1] (the ends are escapes)."""
    if b not in _QG:
        _QG[b] = _model.QuantizedGaussian(-b - 1, b + 1)
    return _QG[b]


def _box_mean(k: Tensor, gen: Tensor, i: int) -> Tuple[Tensor, Tensor, float]:
    """(integer centre c, fractional mean, step h) of coordinate i's 1-D lattice given k_{>i}."""
    off = torch.zeros(k.size(0), dtype=torch.float64)
    for j in range(i + 1, k.size(1)):
        off = off + k[:, j].to(torch.float64) * gen[j, i].item()
    h = gen[i, i].item()
    m = -off / h
    c = torch.round(m)
    return c, m - c, h


# ---------------------------------------------------------------------------- streams
class _Stream:
    def __init__(self, gaussian_conditional, lattice: Lattice, tail: float, max_joint: int,
                 scale_levels: Optional[int] = None, scale_keys: str = "up"):
        gen = lattice.generator.to(torch.float64)
        if not torch.equal(gen, gen.tril()):
            raise ValueError(f"{lattice!r}: the box model needs a lower-triangular generator")
        self.gc, self.lattice, self.gen = gaussian_conditional, lattice, gen
        self.key_scales = key_table(gaussian_conditional, scale_levels)
        self.scale_keys = check_rule(scale_keys)
        self._key_scales_f64 = self.key_scales.double()  # the table scales the PMFs are computed at
        self.tables = LatticeTables(lattice, tail, max_joint)
        self.z = self.tables._z

    def _keys(self, sigma: Tensor) -> Tuple[Tensor, Tensor, list, Tensor]:
        """Scales (G, v) on the CPU -> (table keys (U, v), group order (G,), counts, joint (U,)).

        The key of a scale follows `scale_keys` (`codecx.coding.scale_keys`: "up" is CompressAI's
        `build_indexes`, the first table scale >= it after the lower bound; "nearest" the nearest
        in log), computed here on the CPU whatever the model's device. Groups
        are visited key by key (keys ascending, groups in order within a key): `order` split
        by `counts`.
        """
        table = self.key_scales
        s = sigma.to(table.dtype).clamp_min(float(self.gc.lower_bound_scale.bound))
        idx = key_indexes(table, s, self.scale_keys)
        radix = len(table) ** torch.arange(idx.size(1), dtype=torch.int64)
        flat, order = torch.sort((idx * radix).sum(-1), stable=True)
        uniq, counts = torch.unique_consecutive(flat, return_counts=True)
        keys = torch.div(uniq.unsqueeze(1), radix, rounding_mode="floor") % len(table)
        return keys, order, counts.tolist(), self.tables.joint(self._key_scales_f64[keys])

    def _tables(self, keys: Tensor, joint: Tensor) -> list:
        """The joint table of each key (U, v), None where the box model codes the key."""
        scales = self._key_scales_f64[keys].tolist()
        return [self.tables.get(tuple(s)) if j else None for s, j in zip(scales, joint.tolist())]


class LatticeStreamEncoder(_Stream):
    """Accumulates lattice symbols of one latent tensor; `finish()` returns the bytes."""

    def __init__(self, gaussian_conditional, lattice: Lattice, tail: float = 1e-7, max_joint: int = 2048,
                 scale_levels: Optional[int] = None, scale_keys: str = "up"):
        super().__init__(gaussian_conditional, lattice, tail, max_joint, scale_levels, scale_keys)
        self._enc = _queue.RangeEncoder()

    def put(self, k: Tensor, sigma: Tensor, k_rest: Tensor, sigma_rest: Tensor) -> None:
        """Code lattice indices `k` (G, v) with scales `sigma` (G, v), then the scalar
        remainder `k_rest` (R,) (integers) with scales `sigma_rest` (R,)."""
        k, k_rest, sigma, sigma_rest = k.cpu(), k_rest.cpu(), sigma.detach().cpu(), sigma_rest.detach().cpu()
        if k.numel():
            keys, order_t, counts_list, joint = self._keys(sigma)
            tables = self._tables(keys, joint)
            order, counts = order_t.numpy(), np.array(counts_list, dtype=np.int64)
            in_joint = np.repeat(joint.numpy(), counts)  # per group in `order`
            rows = order[in_joint]  # the joint groups, key by key
            box_np = np.zeros(len(k), dtype=bool)
            box_np[order[~in_joint]] = True
            if len(rows):
                used = [t for t in tables if t is not None]
                sym, esc = _symbols(used, counts[joint.numpy()], k.numpy()[rows])
                sym = sym.astype(np.int32)
                start = 0
                for t, n in zip(used, counts[joint.numpy()].tolist()):
                    self._enc.encode(sym[start : start + n], t.model)
                    start += n
                box_np[rows[esc]] = True  # escaped: coded again below with the box model
            box = torch.from_numpy(box_np)
            if bool(box.any()):
                self._put_box(k[box], sigma[box].detach().cpu().double(), self.gen)
        if k_rest.numel():
            self._put_box(k_rest.reshape(-1, 1), sigma_rest.detach().cpu().double().reshape(-1, 1), Z1_GENERATOR)

    def _put_box(self, k: Tensor, sigma: Tensor, gen: Tensor) -> None:
        for i in reversed(range(k.size(1))):
            c, mean, h = _box_mean(k, gen, i)
            std = sigma[:, i] / h
            s = k[:, i] - c.to(torch.int64)
            bound = _box_bound(std, self.z)
            for b in torch.unique(bound).tolist():
                sel = bound == b
                ss = s[sel]
                esc = ss.abs() > b
                sym = ss.clamp(-b - 1, b + 1).to(torch.int32).numpy()
                self._enc.encode(sym, _qgauss(b), mean[sel].numpy(), std[sel].numpy())
                _put_ints(self._enc, ss[esc])

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class LatticeStreamDecoder(_Stream):
    """Reads back what `LatticeStreamEncoder` wrote, in the same order."""

    def __init__(self, gaussian_conditional, lattice: Lattice, data: bytes, tail: float = 1e-7,
                 max_joint: int = 2048, scale_levels: Optional[int] = None, scale_keys: str = "up"):
        super().__init__(gaussian_conditional, lattice, tail, max_joint, scale_levels, scale_keys)
        data = bytes(data)
        words = np.frombuffer(data[: len(data) // 4 * 4], dtype="<u4").astype(np.uint32)
        self._dec = _queue.RangeDecoder(words)

    def get(self, sigma: Tensor, sigma_rest: Tensor) -> Tuple[Tensor, Tensor]:
        """Lattice indices (G, v) and scalar remainder (R,) for scales (G, v) and (R,)."""
        sigma, sigma_rest = sigma.detach().cpu(), sigma_rest.detach().cpu()
        g, v = sigma.shape
        k = torch.zeros(g, v, dtype=torch.int64)
        if g:
            keys, order_t, counts, joint = self._keys(sigma)
            out, box_np, order = k.numpy(), np.zeros(g, dtype=bool), order_t.numpy()
            ends = np.cumsum(counts).tolist()
            for t, start, end in zip(self._tables(keys, joint), [0] + ends[:-1], ends):
                rows = order[start:end]
                if t is None:
                    box_np[rows] = True
                    continue
                sym = self._dec.decode(t.model, len(rows))
                esc = sym >= t.size
                out[rows] = t.offsets_np[np.minimum(sym, t.size - 1)]
                box_np[rows[esc]] = True
            box = torch.from_numpy(box_np)
            if bool(box.any()):
                k[box] = self._get_box(sigma[box].detach().cpu().double(), self.gen)
        r = sigma_rest.numel()
        k_rest = self._get_box(sigma_rest.detach().cpu().double().reshape(-1, 1), Z1_GENERATOR)[:, 0] \
            if r else torch.zeros(0, dtype=torch.int64)
        return k, k_rest

    def _get_box(self, sigma: Tensor, gen: Tensor) -> Tensor:
        n, v = sigma.shape
        k = torch.zeros(n, v, dtype=torch.int64)
        for i in reversed(range(v)):
            c, mean, h = _box_mean(k, gen, i)
            std = sigma[:, i] / h
            bound = _box_bound(std, self.z)
            s = torch.zeros(n, dtype=torch.int64)
            for b in torch.unique(bound).tolist():
                sel = bound == b
                sym = torch.from_numpy(self._dec.decode(_qgauss(b), mean[sel].numpy(), std[sel].numpy())
                                       .astype(np.int64))
                esc = sym.abs() > b
                n_esc = int(esc.sum())
                if n_esc:
                    sym[esc] = _get_ints(self._dec, n_esc)
                s[sel] = sym
            k[:, i] = s + c.to(torch.int64)
        return k
