"""Scalar quantizers: uniform noise, straight-through rounding and the mixed estimator."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from codecx.coding.rans import RansStreamDecoder, RansStreamEncoder
from codecx.coding.scale_keys import check_rule, key_indexes, scale_keys_table
from codecx.quantizers.base import Quantizer
from codecx.types import EntropyParams, QuantizerOutput


def ste_round(x: Tensor) -> Tensor:
    """Rounding with an identity gradient (straight-through estimator, Theis et al. 2017)."""
    return x + (torch.round(x) - x).detach()


class ScalarQuantizer(Quantizer):
    """Integer rounding of `y - means` coded with CompressAI's rANS tables.

    Subclasses only choose the training relaxation (`relax`); eval and coding are shared.
    `scale_keys`: which CDF table codes a Gaussian of predicted scale s (`codecx.coding.scale_keys`):
    "up" (default: CompressAI's rule, byte-identical to it; the first table scale >= s) or
    "nearest" (the nearest table scale in log: no first-order excess of real over estimated
    bits; the quantizer configs choose it).
    """

    def __init__(self, scale_keys: str = "up"):
        super().__init__()
        self.scale_keys = check_rule(scale_keys)

    def _indexes(self, params: EntropyParams) -> Tensor:
        """The CDF table of every element: its channel's under a factorized prior (the entropy
        bottleneck's tables), else its scale's under `scale_keys` ("up" == CompressAI's
        `build_indexes`, in one search instead of a pass per level)."""
        if params.scales is None:
            c = params.means.size(1)
            shape = [1] * params.means.dim()
            shape[1] = c
            idx = torch.arange(c, device=params.means.device, dtype=torch.int32).view(shape)
            return idx.expand_as(params.means)
        m: Any = params.entropy_model  # GaussianConditional: scale_table, lower_bound_scale
        return key_indexes(m.scale_table, m.lower_bound_scale(params.scales), self.scale_keys).to(torch.int32)

    def extra_repr(self) -> str:
        return "" if self.scale_keys == "up" else f"scale_keys={self.scale_keys!r}"

    def relax(self, y: Tensor, means: Tensor) -> tuple[Tensor, Tensor]:
        """(`y_hat` for g_s, values whose bin likelihood gives the rate) in training."""
        raise NotImplementedError

    def forward(self, y: Tensor, params: EntropyParams) -> QuantizerOutput:
        if self.training:
            y_hat, y_rate = self.relax(y, params.means)
        else:
            y_hat = y_rate = self.hard(y, params)
        return QuantizerOutput(y_hat=y_hat, likelihoods=params.likelihood(y_rate))

    def hard(self, y: Tensor, params: EntropyParams) -> Tensor:
        return torch.round(y - params.means) + params.means

    def open_encoder(self, entropy_model) -> RansStreamEncoder:
        return RansStreamEncoder(entropy_model)

    def encode(self, stream: RansStreamEncoder, y: Tensor, params: EntropyParams) -> Tensor:
        symbols = torch.round(y - params.means)
        stream.encode(symbols, self._indexes(params))
        return symbols + params.means

    def open_decoder(self, entropy_model, data: bytes) -> RansStreamDecoder:
        return RansStreamDecoder(entropy_model, data)

    def decode(self, stream: RansStreamDecoder, params: EntropyParams) -> Tensor:
        symbols = stream.decode(self._indexes(params))
        return symbols.to(params.means.dtype) + params.means

    def position_decoder(self, stream: Any, entropy_model: Any) -> Optional[Callable[[Tensor, Tensor, Tensor], None]]:
        """`decode` of one position of a Gaussian prior in five tensor operations (the lower
        bound, the table search, the rANS decoder on the arrays, the sum with the means), the
        same values; None where `decode` is overridden or the compiled rANS decoder is missing."""
        if type(self).decode is not ScalarQuantizer.decode or not getattr(stream, "compiled", False):
            return None
        m: Any = entropy_model
        bound = m.lower_bound_scale.bound
        keys = scale_keys_table(m.scale_table, self.scale_keys, bound.dtype)

        def step(scales: Tensor, means: Tensor, out: Tensor) -> None:
            s = torch.max(scales, bound)  # CompressAI's LowerBound forward
            idx = torch.searchsorted(keys, s, out_int32=True)
            torch.add(stream.decode_array(idx.numpy()), means, out=out)

        return step


class NoiseQuantizer(ScalarQuantizer):
    """Additive uniform noise U(-1/2, 1/2) in training (Ballé et al. 2017)."""

    def relax(self, y, means):
        y_tilde = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return y_tilde, y_tilde


class STEQuantizer(ScalarQuantizer):
    """Rounding around the means with a straight-through gradient, for rate and g_s."""

    def relax(self, y, means):
        y_hat = ste_round(y - means) + means
        return y_hat, y_hat

    def context_input(self, y):
        return ste_round(y)


class MixedQuantizer(ScalarQuantizer):
    """Noise for the rate term, STE-rounded `y_hat` into g_s (Minnen & Singh 2020)."""

    def relax(self, y, means):
        y_tilde = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return ste_round(y - means) + means, y_tilde

    def context_input(self, y):
        return ste_round(y)
