"""Real entropy coding of scalar symbols with CompressAI's rANS coder (Duda 2013).

An encoder is opened once per image and fed symbols in decoding order, possibly position by
position (serial context models); it buffers them and codes them in one call of CompressAI's
`BufferedRansEncoder` at `finish()`, which returns the bytes. The decoder reads CompressAI's
stream format (`rans_interface.cpp`: ryg_rans' 64-bit-state Rans64, 32-bit words, 16-bit
probabilities, 4-bit bypass words for values outside a table) with a numba-compiled port that
keeps the tables as arrays, so decoding one position costs microseconds, not a conversion of
every CDF table (issue 33); without numba it falls back to CompressAI's `RansDecoder`.
"""
from __future__ import annotations

import math
import weakref
from typing import List, Optional

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; CompressAI's decoder otherwise
    numba = None


class NonFiniteLatentError(ValueError):
    """NaN / Inf reached the entropy coder (the rANS encoder would never finish on them)."""


#: the largest |symbol| the encoder takes: CompressAI's escape coding loops without end on
#: values near 2**27 and more; a trained codec's symbols stay within a few hundred
MAX_SYMBOL = 2**26


def check_codable(what: str, symbols: Tensor) -> None:
    """NonFiniteLatentError naming `what` unless every symbol is finite and within +-MAX_SYMBOL
    (one pass: the largest magnitude is NaN / Inf when any symbol is)."""
    if not symbols.numel():
        return
    largest = float(symbols.detach().abs().amax())
    if not math.isfinite(largest):
        raise NonFiniteLatentError(_not_finite(what))
    if largest > MAX_SYMBOL:
        raise NonFiniteLatentError(
            f"{what} is {largest:.3g} quantization steps from its mean, beyond the coder's "
            f"+-{MAX_SYMBOL}: the model's latents are out of range (diverged or damaged weights?)")


def _not_finite(what: str) -> str:
    return (f"{what} is not finite (NaN/Inf) and cannot be entropy coded: the model's weights or the "
            "image are not finite (a diverged or damaged checkpoint?)")


def check_finite(what: str, t: Optional[Tensor]) -> None:
    """NonFiniteLatentError naming `what` unless every value of `t` is finite (None passes)."""
    if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteLatentError(_not_finite(what))


class _Tables:
    """The entropy model's quantized CDF tables as the lists the C++ coder wants, converted
    once per set of tables (`update()` replaces the buffers, which invalidates the cache)."""

    _cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __new__(cls, entropy_model):
        bufs = (entropy_model._quantized_cdf, entropy_model._cdf_length, entropy_model._offset)
        if bufs[0].numel() == 0:
            raise RuntimeError(
                "the entropy model has no CDF tables: call codec.update(force=True) "
                "before compress()/decompress()"
            )
        # the entry holds the buffers themselves: same objects, unchanged since (`_version`)
        key = [(b, b._version) for b in bufs]
        hit = cls._cache.get(entropy_model)
        if hit is not None and all(a is b and va == vb for (a, va), (b, vb) in zip(hit[0], key)):
            return hit[1]
        self = super().__new__(cls)
        self.cdf: List[List[int]] = bufs[0].tolist()
        self.cdf_length: List[int] = bufs[1].reshape(-1).int().tolist()
        self.offset: List[int] = bufs[2].reshape(-1).int().tolist()
        # the same tables as arrays, for the compiled decoder
        self.cdf_np = np.ascontiguousarray(bufs[0].detach().cpu().numpy(), dtype=np.int32)
        self.cdf_length_np = np.ascontiguousarray(bufs[1].detach().cpu().reshape(-1).numpy(), dtype=np.int32)
        self.offset_np = np.ascontiguousarray(bufs[2].detach().cpu().reshape(-1).numpy(), dtype=np.int32)
        cls._cache[entropy_model] = (key, self)
        return self


_RANS64_L = 1 << 31  # Rans64's normalisation bound (ryg_rans rans64.h)


def _rans_decode_py(words, state, indexes, cdf, cdf_length, offset, out):  # pragma: no cover - compiled
    """CompressAI's `RansDecoder.decode_stream` (rans_interface.cpp) on arrays: decode one
    symbol per entry of `indexes` (table numbers) into `out`; `state` = [Rans64 state, word
    position] carries over between calls. Reads past the end of `words` read zeros."""
    n_words = words.shape[0]
    n_tables = cdf_length.shape[0]
    low = np.uint64(_RANS64_L)
    mask = np.uint64(0xFFFF)
    x = state[0]
    ptr = np.int64(state[1])
    for i in range(indexes.shape[0]):
        t = indexes[i]
        if t < 0 or t >= n_tables:
            raise ValueError("rANS decoder: a CDF table index is out of range")
        size = np.int64(cdf_length[t])
        cum = np.int64(x & mask)
        # the s with cdf[s] <= cum < cdf[s + 1] (tables increase strictly): galloping from the
        # entry of symbol 0 (most symbols lie near it: few cache lines), then bisection
        lo, hi = np.int64(0), size - 1
        c = min(max(np.int64(-offset[t]), lo), hi - 1)
        step = np.int64(1)
        if cdf[t, c] <= cum:
            lo = c
            while lo + step < hi and cdf[t, lo + step] <= cum:
                lo += step
                step *= 2
            hi = min(lo + step, hi)
        else:
            hi = c
            while hi - step > lo and cdf[t, hi - step] > cum:
                hi -= step
                step *= 2
            lo = max(hi - step, lo)
        while hi - lo > 1:  # cdf[lo] <= cum < cdf[hi]
            mid = (lo + hi) >> 1
            if cdf[t, mid] <= cum:
                lo = mid
            else:
                hi = mid
        start = np.uint64(cdf[t, lo])
        freq = np.uint64(cdf[t, lo + 1] - cdf[t, lo])
        x = freq * (x >> np.uint64(16)) + (x & mask) - start
        if x < low:
            w = words[ptr] if ptr < n_words else np.uint32(0)
            x = (x << np.uint64(32)) | np.uint64(w)
            ptr += 1
        value = lo
        if lo == size - 2:  # bypass mode: a count of 4-bit words, then the raw value
            n_bypass = np.int64(0)
            raw = np.int64(0)
            j = np.int64(-1)  # -1: reading the count
            while True:
                val = np.int64(x & np.uint64(15))
                x = x >> np.uint64(4)
                if x < low:
                    w = words[ptr] if ptr < n_words else np.uint32(0)
                    x = (x << np.uint64(32)) | np.uint64(w)
                    ptr += 1
                if j < 0:
                    n_bypass += val
                    if val != 15:
                        j = 0
                elif j < 8:  # CompressAI's int32 raw value holds 8 words
                    raw |= val << (4 * j)
                    j += 1
                else:
                    j += 1
                if j >= 0 and j >= n_bypass:
                    break
            if raw >= 2147483648:  # int32 wrap, as in rans_interface.cpp
                raw -= 4294967296
            value = raw >> 1
            if raw & 1:
                value = -value - 1
            else:
                value += size - 2
        out[i] = value + offset[t]
    state[0] = x
    state[1] = np.uint64(ptr)


_rans_decode = None if numba is None else numba.njit(cache=True, nogil=True)(_rans_decode_py)


class RansStreamEncoder:
    """Accumulates (symbol, table index) pairs and flushes them into one rANS stream."""

    def __init__(self, entropy_model):
        self.tables = _Tables(entropy_model)
        self._enc = BufferedRansEncoder()
        self._symbols: List[Tensor] = []
        self._indexes: List[Tensor] = []

    def encode(self, symbols: Tensor, indexes: Tensor) -> None:
        check_codable("a symbol of the latent", symbols)  # NaN -> INT_MIN, huge: an endless escape code
        # buffered: one call of the C++ coder at `finish` (its tables are converted per call)
        self._symbols.append(symbols.detach().reshape(-1).to(torch.int32, copy=True).cpu())
        self._indexes.append(indexes.detach().reshape(-1).to(torch.int32, copy=True).cpu())

    def finish(self) -> bytes:
        if self._symbols:
            self._enc.encode_with_indexes(
                torch.cat(self._symbols).tolist(),
                torch.cat(self._indexes).tolist(),
                self.tables.cdf,
                self.tables.cdf_length,
                self.tables.offset,
            )
            self._symbols, self._indexes = [], []
        return self._enc.flush()


class RansStreamDecoder:
    """Reads symbols back from one rANS stream in the order they were encoded."""

    def __init__(self, entropy_model, data: bytes):
        self.tables = _Tables(entropy_model)
        if _rans_decode is not None:
            data = bytes(data)
            self._words = np.frombuffer(data[: len(data) // 4 * 4], dtype="<u4").astype(np.uint32)
            w = np.zeros(2, dtype=np.uint64)
            w[: min(2, len(self._words))] = self._words[:2]
            self._state = np.array([w[0] | (w[1] << np.uint64(32)), 2], dtype=np.uint64)  # Rans64DecInit
            return
        self._dec = RansDecoder()
        self._dec.set_stream(data)

    @property
    def compiled(self) -> bool:
        """Whether the compiled decoder (numba) reads this stream: `decode_array` works."""
        return _rans_decode is not None

    def decode_array(self, idx: np.ndarray) -> Tensor:
        """The symbols (int32 tensor, flat) of the int32 table indexes `idx` (contiguous), with the
        compiled decoder: `decode` without its conversions (the context decoder's inner loop)."""
        out = np.empty(idx.size, dtype=np.int32)
        t = self.tables
        _rans_decode(self._words, self._state, idx.reshape(-1), t.cdf_np, t.cdf_length_np, t.offset_np, out)
        return torch.from_numpy(out)

    def decode(self, indexes: Tensor) -> Tensor:
        if _rans_decode is not None:
            idx = np.ascontiguousarray(indexes.detach().reshape(-1).cpu().numpy(), dtype=np.int32)
            return self.decode_array(idx).to(indexes.device).reshape(indexes.shape)
        values = self._dec.decode_stream(
            indexes.reshape(-1).int().tolist(),
            self.tables.cdf,
            self.tables.cdf_length,
            self.tables.offset,
        )
        # np.fromiter: ~8x faster than torch.tensor(list) for a latent's worth of ints
        symbols = torch.from_numpy(np.fromiter(values, dtype=np.int32, count=len(values)))
        return symbols.to(indexes.device).reshape(indexes.shape)
