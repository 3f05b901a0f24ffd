"""Conditional source entropy models q_theta(X | X_hat) of the CSE regularizer (002_…, sec. 9).

Pixels are 8-bit symbols: X in [0, 1] is coded as k = round(255 X) in {0..255}, and
q_theta(k | X_hat) integrates a Gaussian N(mu, sigma^2) (in 0..255 units) over the bin
[k - 1/2, k + 1/2], the edge bins 0 and 255 taking the tails (PixelCNN++ discretisation).
Rates are in bits per pixel: -log2 q summed over the 3 colour channels of a pixel and
averaged over pixels, the unit of the codec's rate term R.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from compressai.ops import LowerBound
from torch import Tensor, nn

LEVELS = 255  # the largest 8-bit symbol


def discretized_gaussian_likelihood(k: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """P(k) = Phi((k+1/2-mu)/sigma) - Phi((k-1/2-mu)/sigma), tails into bins 0 and 255 (eq. 29)."""
    hi = ((k + 0.5 - mu) / sigma).masked_fill(k >= LEVELS, math.inf)
    lo = ((k - 0.5 - mu) / sigma).masked_fill(k <= 0, -math.inf)
    # right of the mean, difference the upper tails: no cancellation near 1 (CompressAI's trick)
    s = torch.where(lo > 0, -1.0, 1.0)
    return s * (torch.special.ndtr(s * hi) - torch.special.ndtr(s * lo))


def to_symbols(x: Tensor) -> Tensor:
    """8-bit symbols k = round(255 x) of an image in [0, 1], as floats."""
    return torch.round(x.clamp(0, 1) * LEVELS)


class MaskedConv2d(nn.Conv2d):
    """Causal convolution (PixelCNN mask "A"): the output at a pixel sees only pixels strictly
    before it in raster order, all channels alike (the centre is masked for every channel).

    Unlike CompressAI's layer it masks functionally (`weight * mask`), so it works with
    `torch.func.functional_call` and never writes to its parameters.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5):
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        mask = torch.ones_like(self.weight)
        c = kernel_size // 2
        mask[:, :, c, c:] = 0
        mask[:, :, c + 1:] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class SourceModel(nn.Module):
    """q_theta(X | X_hat): a per-pixel discretised Gaussian whose (mu, sigma) a CNN predicts."""

    kind = ""

    def __init__(self, hidden: int = 32, scale_bound: float = 0.11,
                 likelihood_bound: float = 1e-9):
        super().__init__()
        self.hidden = int(hidden)
        if self.hidden < 1:
            raise ValueError(f"hidden={hidden}: the source model needs at least one channel")
        self.scale_lower = LowerBound(scale_bound)
        self.likelihood_lower = LowerBound(likelihood_bound)
        # features of X_hat (eq. 30), shared by both kinds: a 5x5 view of X_hat, then a 1x1
        # mixing layer (full-resolution 3x3 hidden layers would cost ~3x more per step)
        self.features = nn.Sequential(
            nn.Conv2d(3, self.hidden, 5, padding=2), nn.LeakyReLU(inplace=True),
            nn.Conv2d(self.hidden, self.hidden, 1), nn.LeakyReLU(inplace=True))

    def _head(self, h: int) -> nn.Conv2d:
        head = nn.Conv2d(h, 6, 1)
        with torch.no_grad():  # start at sigma ~ 4 levels around mu = 255 * X_hat
            head.weight.mul_(0.1)
            head.bias.zero_()
            head.bias[3:].fill_(math.log(math.expm1(4.0)))
        return head

    def raw(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The 6 output channels (mu offsets, pre-softplus scales) at every pixel."""
        raise NotImplementedError

    def params(self, x: Tensor, x_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """(mu, sigma) per pixel and channel in 0..255 units; mu = 255 X_hat + a learned offset."""
        d_mu, s = self.raw(x, x_hat).chunk(2, dim=1)
        return LEVELS * x_hat + d_mu, self.scale_lower(F.softplus(s))

    def likelihood(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """q_theta(k | X_hat) per element, lower-bounded at 1e-9 (shape of x)."""
        mu, sigma = self.params(x, x_hat)
        return self.likelihood_lower(discretized_gaussian_likelihood(to_symbols(x), mu, sigma))

    def bits_per_pixel(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """-log2 q_theta(X | X_hat) summed over channels, averaged over pixels: the batch's
        estimate of H(X | X_hat) in bits per pixel (the negative of eq. 12's regularizer)."""
        n, _, h, w = x.shape
        return -torch.log2(self.likelihood(x, x_hat)).sum() / (n * h * w)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return self.bits_per_pixel(x, x_hat)


class GaussianSourceModel(SourceModel):
    """Hyperprior-aligned q_theta: mu, sigma = f_theta(X_hat) (eqs. 29–30)."""

    kind = "hyperprior"

    def __init__(self, hidden: int = 32, **kwargs):
        super().__init__(hidden, **kwargs)
        self.head = self._head(self.hidden)

    def raw(self, x, x_hat):
        return self.head(self.features(x_hat))


class ContextSourceModel(SourceModel):
    """Autoregressive-aligned q_theta: mu, sigma = f_theta(X_hat, X_<i) with a 5x5 masked
    convolution over the 8-bit symbols of X, fused by 1x1 convolutions as in mbt2018 (eq. 31)."""

    kind = "autoregressive"

    def __init__(self, hidden: int = 32, kernel_size: int = 5, **kwargs):
        super().__init__(hidden, **kwargs)
        self.context = MaskedConv2d(3, self.hidden, kernel_size)
        self.fuse = nn.Sequential(nn.Conv2d(2 * self.hidden, self.hidden, 1),
                                  nn.LeakyReLU(inplace=True))
        self.head = self._head(self.hidden)

    def raw(self, x, x_hat):
        ctx = self.context(to_symbols(x) / LEVELS - 0.5)
        return self.head(self.fuse(torch.cat([ctx, self.features(x_hat)], dim=1)))


SOURCE_MODELS = {"hyperprior": GaussianSourceModel, "autoregressive": ContextSourceModel}
#: the aligned source model of each backbone entropy-model family (sec. 4.1 and sec. 10)
ALIGNED = {"factorized": "hyperprior", "hyperprior": "hyperprior", "context": "autoregressive"}


def build_source_model(kind: str, **kwargs) -> SourceModel:
    """A source model by name: "hyperprior" (Gaussian) or "autoregressive" (masked context)."""
    if kind not in SOURCE_MODELS:
        raise ValueError(f"source_model={kind!r}: choose one of {list(SOURCE_MODELS)}")
    return SOURCE_MODELS[kind](**kwargs)
