"""The quantizer interface every quantizer (scalar or lattice) implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from codecx.types import EntropyParams, QuantizerOutput


class Quantizer(nn.Module, ABC):
    """Turns `y` into `y_hat` given the prior's `(means, scales)`, and says how likely it is.

    In training mode `forward` returns a differentiable relaxation; in eval mode the hard
    quantization that the coder reproduces exactly. Coding goes through `open_encoder` /
    `encode` / `finish` and `open_decoder` / `decode`, so that serial context models can feed
    one spatial position at a time and the backbone never branches on the quantizer.
    """

    #: elements quantized jointly (1 for scalar quantizers, the lattice dimension otherwise)
    dim: int = 1
    #: rounds each element on its own (SGA's relaxation needs this; codecx.config.check's rules read it)
    scalar: bool = True
    #: needs the prior's Gaussian means and scales (not the factorized prior's CDF)
    needs_gaussian_prior: bool = False

    @abstractmethod
    def forward(self, y: Tensor, params: EntropyParams) -> QuantizerOutput:
        """Relaxed (training) or hard (eval) quantization with likelihoods."""

    def context_input(self, y: Tensor) -> Tensor:
        """What a training-mode spatial context model sees before the means are known."""
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)

    @abstractmethod
    def hard(self, y: Tensor, params: EntropyParams) -> Tensor:
        """The decoder's `y_hat` for `y` (no gradient needed)."""

    def likelihood(self, y_hat: Tensor, params: EntropyParams) -> Tensor:
        """Likelihoods of an already quantized `y_hat` (serial context models' eval rate)."""
        return params.likelihood(y_hat)

    @abstractmethod
    def open_encoder(self, params_model) -> object:
        """A stream encoder for symbols coded with `params_model` (an entropy model)."""

    @abstractmethod
    def encode(self, stream, y: Tensor, params: EntropyParams) -> Tensor:
        """Quantize `y`, push its symbols to `stream`, return `y_hat`."""

    @abstractmethod
    def open_decoder(self, params_model, data: bytes) -> object:
        """A stream decoder over `data`."""

    @abstractmethod
    def decode(self, stream, params: EntropyParams) -> Tensor:
        """Pull the symbols of one tensor with prior `params`, return `y_hat`."""

    def position_decoder(self, stream, entropy_model):
        """None, or a function `(scales, means, out)` that does what `decode` does for one
        position of a context model ((1, M) scales and means, the result written into `out`)
        with fewer tensor operations: the serial decoder's inner step (codecx.coding.context).
        The default None: the decoder calls `decode`."""
        return None
