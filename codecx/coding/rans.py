"""Real entropy coding of scalar symbols with CompressAI's rANS coder (Duda 2013).

An encoder is opened once per image and fed symbols in decoding order, possibly position by
position (serial context models); `finish()` returns the bytes.
"""
from __future__ import annotations

from typing import List

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor


class _Tables:
    """The entropy model's quantized CDF tables as the lists the C++ coder wants (once)."""

    def __init__(self, entropy_model):
        if entropy_model._quantized_cdf.numel() == 0:
            raise RuntimeError(
                "the entropy model has no CDF tables: call codec.update(force=True) "
                "before compress()/decompress()"
            )
        self.cdf: List[List[int]] = entropy_model._quantized_cdf.tolist()
        self.cdf_length: List[int] = entropy_model._cdf_length.reshape(-1).int().tolist()
        self.offset: List[int] = entropy_model._offset.reshape(-1).int().tolist()


class RansStreamEncoder:
    """Accumulates (symbol, table index) pairs and flushes them into one rANS stream."""

    def __init__(self, entropy_model):
        self.tables = _Tables(entropy_model)
        self._enc = BufferedRansEncoder()

    def encode(self, symbols: Tensor, indexes: Tensor) -> None:
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
        return torch.tensor(values, dtype=torch.int32, device=indexes.device).reshape(
            indexes.shape
        )
