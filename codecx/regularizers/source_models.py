"""Conditional source entropy models q_theta(X | X_hat) of the CSE regularizer (arXiv 2411.16727, sec. 9).

The paper leaves the discretisation of X open; `bin_width` w (in 0..255 units) chooses it.
X in [0, 1] is first read as its 8-bit value v = round(255 X); with w = 1 (the default) the
symbol is v itself and q_theta(v | X_hat) integrates a Gaussian N(mu, sigma^2) (0..255 units)
over [v - 1/2, v + 1/2], the edge bins 0 and 255 taking the tails (PixelCNN++). A width w
puts v in the bin j = floor(v / w + 1/2) of a grid of bins [j w - w/2, j w + w/2) (w > 1:
coarser than 8 bits), the first and the last bin again taking the tails.
`bin_width="continuous"` uses the Gaussian density at v in 0..255 units instead, i.e. the
probability of a reference bin one 8-bit level wide under the density (the w -> 0 limit of
the binned model plus log2 w). Rates are in bits per pixel: -log2 q summed over the 3 colour
channels of a pixel and averaged over pixels, the unit of the codec's rate term R.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from compressai.ops import LowerBound
from torch import Tensor, nn

LEVELS = 255  # the largest 8-bit symbol
CONTINUOUS = "continuous"  # bin_width of the density model (reference width: one 8-bit level)
LOG2_SQRT_2PI = 0.5 * math.log2(2 * math.pi)


def check_bin_width(bin_width: Union[float, str, None]) -> Optional[float]:
    """The bin width as a positive float (None -> 1.0, 8-bit bins), or None for "continuous";
    ValueError naming the valid choices otherwise."""
    if bin_width is None:
        return 1.0
    if isinstance(bin_width, str) and bin_width.strip().lower() == CONTINUOUS:
        return None
    try:
        w = float(bin_width)
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w > 0) or isinstance(bin_width, bool):
        raise ValueError(f"reg.bin_width={bin_width!r}: give the width of X's bins in 8-bit levels "
                         f"(a number > 0: 1 = 8-bit, larger = coarser) or '{CONTINUOUS}'")
    return w


def discretized_gaussian_likelihood(k: Tensor, mu: Tensor, sigma: Tensor, width: float = 1.0) -> Tensor:
    """P(k) = Phi(((k+1/2) w - mu)/sigma) - Phi(((k-1/2) w - mu)/sigma) for bin k of width w
    (8-bit levels); the first bin (k <= 0) and the last (the bin of 255) take the tails (eq. 29)."""
    width = float(width)  # edges (k +- 1/2) w: neighbours share theirs exactly (bins tile the line)
    hi = (((k + 0.5) * width - mu) / sigma).masked_fill(k >= last_bin(width), math.inf)
    lo = (((k - 0.5) * width - mu) / sigma).masked_fill(k <= 0, -math.inf)
    # right of the mean, difference the upper tails: no cancellation near 1 (CompressAI's trick)
    s = torch.where(lo > 0, -1.0, 1.0)
    return s * (torch.special.ndtr(s * hi) - torch.special.ndtr(s * lo))


def gaussian_density(v: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """N(v; mu, sigma^2) in 0..255 units: the probability of a one-level reference bin at v."""
    a = (v - mu) / sigma
    return torch.exp(-0.5 * a * a) / (sigma * math.sqrt(2 * math.pi))


def to_symbols(x: Tensor) -> Tensor:
    """8-bit symbols k = round(255 x) of an image in [0, 1], as floats."""
    return torch.round(x.clamp(0, 1) * LEVELS)


def to_bins(x: Tensor, width: float = 1.0) -> Tensor:
    """Bin indices j = floor(round(255 x) / w + 1/2) on the grid of width w (= to_symbols at w=1)."""
    return torch.floor(to_symbols(x) / float(width) + 0.5)


def last_bin(width: float) -> float:
    """Index of the bin that holds the 8-bit value 255 (computed like to_bins, in float32)."""
    return float(to_bins(torch.ones(()), width))


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
    """q_theta(X | X_hat): a per-pixel discretised Gaussian whose (mu, sigma) a CNN predicts.

    The CNN over X_hat works at half resolution on 2x2 pixel blocks (space-to-depth: 12
    channels in, 3x3 convolutions, so each output sees a 6x6-pixel neighbourhood) and its head
    predicts the parameters of the 4 pixels of each block (depth-to-space back to full size):
    per-pixel outputs at a quarter of the full-resolution cost, so the regularizer adds ~8% to
    an mbt_mean training step instead of ~30% with full-resolution 5x5 features (bench_cse).
    """

    kind = ""
    block = 2  # space-to-depth factor of the X_hat path

    def __init__(self, hidden: int = 32, scale_bound: float = 0.11,
                 likelihood_bound: float = 1e-9, bin_width: Union[float, str, None] = 1.0):
        super().__init__()
        self.bin_width = check_bin_width(bin_width)  # None: the density ("continuous")
        self.hidden = int(hidden)
        if self.hidden < 1:
            raise ValueError(f"hidden={hidden}: the source model needs at least one channel")
        self.scale_lower = LowerBound(scale_bound)
        self.likelihood_lower = LowerBound(likelihood_bound)
        b2 = self.block ** 2
        # features of X_hat (eq. 30), shared by both kinds, on 2x2 blocks (half resolution)
        self.features = nn.Sequential(
            nn.Conv2d(3 * b2, self.hidden, 3, padding=1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(self.hidden, self.hidden, 1), nn.LeakyReLU(inplace=True))

    def _head(self, h: int, out: int = 6) -> nn.Conv2d:
        """1x1 conv to `out` channels (for every pixel of a block when `out` = 6 * block^2);
        it starts at sigma ~ 4 levels around mu = 255 * X_hat."""
        head = nn.Conv2d(h, out, 1)
        with torch.no_grad():
            head.weight.mul_(0.1)
            head.bias.zero_()
            per = out // 6  # output channel c*per + k is parameter c of block pixel k
            head.bias[3 * per:].fill_(math.log(math.expm1(4.0)))
        return head

    def block_features(self, x_hat: Tensor, out: nn.Module) -> Tensor:
        """`out(features(X_hat in 2x2 blocks))` back at full resolution: X_hat is
        replicate-padded to even sizes, and the result cropped to X_hat's."""
        h, w = x_hat.shape[-2:]
        b = self.block
        xp = F.pad(x_hat, (0, (-w) % b, 0, (-h) % b), mode="replicate") if (h % b or w % b) else x_hat
        y = F.pixel_shuffle(out(self.features(F.pixel_unshuffle(xp, b))), b)
        return y[..., :h, :w]

    def raw(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The 6 output channels (mu offsets, pre-softplus scales) at every pixel."""
        raise NotImplementedError

    def params(self, x: Tensor, x_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """(mu, sigma) per pixel and channel in 0..255 units; mu = 255 X_hat + a learned offset."""
        d_mu, s = self.raw(x, x_hat).chunk(2, dim=1)
        return LEVELS * x_hat + d_mu, self.scale_lower(F.softplus(s))

    def likelihood(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """q_theta(bin of X | X_hat) per element (the density at X in 0..255 units when
        "continuous"), lower-bounded at 1e-9 (shape of x)."""
        mu, sigma = self.params(x, x_hat)
        if self.bin_width is None:
            return self.likelihood_lower(gaussian_density(to_symbols(x), mu, sigma))
        k = to_bins(x, self.bin_width)
        return self.likelihood_lower(discretized_gaussian_likelihood(k, mu, sigma, self.bin_width))

    def bits_per_pixel(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """-log2 q_theta(X | X_hat) summed over channels, averaged over pixels: the batch's
        estimate of H(X | X_hat) in bits per pixel (the negative of eq. 12's regularizer) for
        X in bins of `bin_width` levels (a differential entropy when "continuous")."""
        n, _, h, w = x.shape
        return -torch.log2(self.likelihood(x, x_hat)).sum() / (n * h * w)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return self.bits_per_pixel(x, x_hat)


class GaussianSourceModel(SourceModel):
    """Hyperprior-aligned q_theta: mu, sigma = f_theta(X_hat) (eqs. 29–30)."""

    kind = "hyperprior"

    def __init__(self, hidden: int = 32, **kwargs):
        super().__init__(hidden, **kwargs)
        self.head = self._head(self.hidden, 6 * self.block ** 2)

    def raw(self, x, x_hat):
        return self.block_features(x_hat, self.head)


class ContextSourceModel(SourceModel):
    """Autoregressive-aligned q_theta: mu, sigma = f_theta(X_hat, X_<i) with a 5x5 masked
    convolution over the 8-bit symbols of X (full resolution, raster order), fused with the
    X_hat features by 1x1 convolutions as in mbt2018 (eq. 31)."""

    kind = "autoregressive"

    def __init__(self, hidden: int = 32, kernel_size: int = 5, **kwargs):
        super().__init__(hidden, **kwargs)
        c = max(1, self.hidden // 2)  # full-resolution channels of the context and the fusion
        self.context = MaskedConv2d(3, c, kernel_size)
        self.expand = nn.Conv2d(self.hidden, c * self.block ** 2, 1)  # X_hat features per pixel
        self.fuse = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.LeakyReLU(inplace=True))
        self.head = self._head(c)

    def raw(self, x, x_hat):
        ctx = self.context(to_symbols(x) / LEVELS - 0.5)
        return self.head(self.fuse(torch.cat([ctx, self.block_features(x_hat, self.expand)], dim=1)))


SOURCE_MODELS = {"hyperprior": GaussianSourceModel, "autoregressive": ContextSourceModel}
#: the aligned source model of each backbone entropy-model family (sec. 4.1 and sec. 10)
ALIGNED = {"factorized": "hyperprior", "hyperprior": "hyperprior", "context": "autoregressive"}


def build_source_model(kind: str, **kwargs) -> SourceModel:
    """A source model by name: "hyperprior" (Gaussian) or "autoregressive" (masked context);
    keyword arguments (hidden, bin_width, ...) go to its constructor."""
    if kind not in SOURCE_MODELS:
        raise ValueError(f"source_model={kind!r}: choose one of {list(SOURCE_MODELS)}")
    return SOURCE_MODELS[kind](**kwargs)
