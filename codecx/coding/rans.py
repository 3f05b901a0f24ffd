"""Real entropy coding of scalar symbols with CompressAI's rANS coder (Duda 2013).

An encoder is opened once per image and fed symbols in decoding order, possibly position by
position (serial context models); `finish()` returns the bytes.
"""
from __future__ import annotations

import weakref
from typing import List, Optional

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor


class NonFiniteLatentError(ValueError):
    """NaN / Inf reached the entropy coder (the rANS encoder would never finish on them)."""


def check_finite(what: str, t: Optional[Tensor]) -> None:
    """NonFiniteLatentError naming `what` unless every value of `t` is finite (None passes)."""
    if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteLatentError(
            f"{what} is not finite (NaN/Inf) and cannot be entropy coded: the model's weights or the "
            "image are not finite (a diverged or damaged checkpoint?)")


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
        cls._cache[entropy_model] = (key, self)
        return self


class RansStreamEncoder:
    """Accumulates (symbol, table index) pairs and flushes them into one rANS stream."""

    def __init__(self, entropy_model):
        self.tables = _Tables(entropy_model)
        self._enc = BufferedRansEncoder()

    def encode(self, symbols: Tensor, indexes: Tensor) -> None:
        check_finite("a symbol of the latent", symbols)  # NaN -> INT_MIN: an endless escape code
        self._enc.encode_with_indexes(
            symbols.reshape(-1).int().tolist(),
            indexes.reshape(-1).int().tolist(),
            self.tables.cdf,
            self.tables.cdf_length,
            self.tables.offset,
        )

    def finish(self) -> bytes:
        return self._enc.flush()


class RansStreamDecoder:
    """Reads symbols back from one rANS stream in the order they were encoded."""

    def __init__(self, entropy_model, data: bytes):
        self.tables = _Tables(entropy_model)
        self._dec = RansDecoder()
        self._dec.set_stream(data)

    def decode(self, indexes: Tensor) -> Tensor:
        values = self._dec.decode_stream(
            indexes.reshape(-1).int().tolist(),
            self.tables.cdf,
            self.tables.cdf_length,
            self.tables.offset,
        )
        # np.fromiter: ~8x faster than torch.tensor(list) for a latent's worth of ints
        symbols = torch.from_numpy(np.fromiter(values, dtype=np.int32, count=len(values)))
        return symbols.to(indexes.device).reshape(indexes.shape)
