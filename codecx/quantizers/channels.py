"""The channels of the pipeline walk: how one walk carries the latents from the encoder to `g_s`
(issue 30, DESIGN.md).

`Codec.walk(channel, x)` runs the same stages for every purpose; the channel is the one thing
that differs. It turns the side latent `z` into `z_hat` (`side`) and the main latent `y` into
`y_hat` with its prior, serial context step included (`main`), says which latent transforms
the walk runs, whether the encoder's refiners run, and what becomes of `y_hat` after them
(`reconstruct`: `g_s`, or nothing when only the streams are wanted)::

    channel          z -> z_hat                 y -> y_hat                     x_hat
    Relaxed (train)  bottleneck noise           the quantizer's relaxation     g_s
    Hard (eval)      rounding on the medians    the decoder's exact y_hat      g_s
    Encode           rANS stream (z)            symbols into a stream (y)      none
    Decode           from the z stream          symbols from the y stream      g_s, clamped
    Identity         z itself                   y itself (no quantization)     g_s
    SGA (refiner)    codecx.inference.sga: Gumbel-annealed rounding of y and z

A new channel subclasses `Channel`. The walk itself has no mode tests: it asks the channel.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from codecx.coding.context import code_context
from codecx.coding.rans import check_finite
from codecx.types import EntropyParams

__all__ = ["Channel", "MainStep", "Relaxed", "Hard", "Encode", "Decode", "Identity", "exact_in_channels_last",
           "channels_last_gives_the_same"]

#: what `Channel.main` returns: y_hat, its prior, the likelihoods of y_hat (None: not
#: estimated), the metrics and the (weighted) loss terms of the quantizer
MainStep = Tuple[Tensor, EntropyParams, Optional[Tensor], Dict[str, Tensor], Dict[str, Tensor]]


def exact_in_channels_last(g_s) -> bool:
    """Whether `g_s` is made of transposed convolutions and (inverse) GDN only (Ballé et al.
    2018, arXiv 1802.01436; Minnen et al. 2018, arXiv 1809.02736): the synthesis whose oneDNN
    kernels give bit-identical output in channels-last (NHWC) and NCHW memory format (measured
    on bmshj2018, mbt2018(-mean): decoded images identical, 1.5-1.6x faster on one CPU core;
    cheng2020's sub-pixel and attention blocks and HiFiC's generator differ in the last bits)."""
    from compressai.layers import GDN
    from compressai.ops import LowerBound, NonNegativeParametrizer

    exact = (nn.Sequential, nn.ConvTranspose2d, GDN, NonNegativeParametrizer, LowerBound)
    return isinstance(g_s, nn.Sequential) and all(type(m) in exact for m in g_s.modules())


_SAME_IN_CHANNELS_LAST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def channels_last_gives_the_same(g_s, y_hat: Tensor) -> bool:
    """Whether `g_s` decodes `y_hat`'s shape to the same floats in channels-last as in NCHW here:
    a synthesis `exact_in_channels_last`, on the CPU in float32 with oneDNN, and a probe (one
    random latent of that shape through both, once per shape and thread count) that agrees bit
    for bit, so that a CPU whose kernels differ falls back to NCHW instead of changing images."""
    if not (y_hat.device.type == "cpu" and y_hat.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and exact_in_channels_last(g_s)):
        return False
    seen = _SAME_IN_CHANNELS_LAST.setdefault(g_s, {})
    key = (tuple(y_hat.shape), torch.get_num_threads())
    if key not in seen:
        probe = 4 * torch.randn(tuple(y_hat.shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            seen[key] = torch.equal(g_s(probe), g_s(probe.contiguous(memory_format=torch.channels_last)).contiguous())
    return seen[key]


class Channel:
    """One way of walking the pipeline (see the module docstring).

    `side(bb, z)` -> (z_hat, likelihoods of z or None); `main(bb, hyper, y)` -> `MainStep`;
    `step(y, params)` -> the `y_hat` of one serial position (context models' coders call it);
    `reconstruct(g_s, y_hat, size)` -> x_hat cropped to `size`, or None. `y` and `z` are None
    where the channel reads them from elsewhere (the decoder's streams).
    """

    #: the walk's name, what `WalkState.mode` says to the latent transforms
    mode: str = "eval"
    #: the transforms and the quantizer run their training form
    training: bool = False
    #: the encoder's refiners (codecx.inference) refine g_a's latents before this channel
    refines: bool = False
    #: the inference-time transforms (`in_training=False`: the latent shift) run too
    inference: bool = True
    #: the decoder's image size (h, w) where the walk has no `x`
    size: Optional[Tuple[int, int]] = None

    def __init__(self, quantizer):
        self.q = quantizer
        self.stream: Any = None
        #: the header options the walk starts from (the decoder's)
        self.options: Dict[str, Any] = {}

    def transforms(self, ts: Sequence) -> List:
        """The latent transforms this walk runs (side hook and main)."""
        return [t for t in ts if t.in_training or self.inference]

    def main_transforms(self, ts: Sequence) -> List:
        """Those of `transforms(ts)` that run on `y_hat` (all, except where nothing is decoded)."""
        return list(ts)

    def accept(self, y: Optional[Tensor], z: Optional[Tensor]) -> None:
        """Check the latents before any stage sees them (default: nothing)."""

    def side(self, bb, z: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def main(self, bb, hyper: Optional[Tensor], y: Optional[Tensor]) -> MainStep:
        raise NotImplementedError

    def step(self, y: Optional[Tensor], params: EntropyParams) -> Tensor:
        """The `y_hat` of one serial position (or wavefront) with prior `params`."""
        return self.q.hard(y, params)

    def reconstruct(self, g_s, y_hat: Tensor, size: Tuple[int, int]) -> Optional[Tensor]:
        return g_s(y_hat)[..., : size[0], : size[1]]

    def streams(self) -> Optional[List[bytes]]:
        """The streams this walk wrote (None: it writes none)."""
        return None


class Relaxed(Channel):
    """Training: the bottleneck's uniform noise on z, the quantizer's relaxation on y, and the
    parallel context of the relaxed y for context models (Minnen et al. 2018)."""

    mode = "train"
    training = True
    inference = False

    def side(self, bb, z):
        return bb.entropy_bottleneck(z)

    def main(self, bb, hyper, y):
        ctx = bb.context(self.q.context_input(y)) if bb.autoregressive else None
        params = bb.params(hyper, like=y, ctx=ctx)
        out = self.q(y, params)
        return out.y_hat, params, out.likelihoods, out.metrics, out.losses


class Hard(Channel):
    """Evaluation: the decoder's exact `y_hat` (hard quantization; context models position by
    position as the decoder, `codecx.coding.context`), with its likelihoods. `inference=False`
    leaves out the inference-time transforms (the latent shift: the unshifted `y_hat`)."""

    mode = "eval"
    refines = True

    def __init__(self, quantizer, inference: bool = True):
        super().__init__(quantizer)
        self.inference = bool(inference)

    def side(self, bb, z):
        return bb.entropy_bottleneck(z)

    def main(self, bb, hyper, y):
        if bb.autoregressive:
            y_hat, params = code_context(bb, hyper, y, self, y.shape)
            return y_hat, params, self.q.likelihood(y_hat, params), {}, {}
        params = bb.params(hyper, like=y)
        out = self.q(y, params)
        return out.y_hat, params, out.likelihoods, out.metrics, {}


class Encode(Channel):
    """Coding: z into CompressAI's bottleneck stream, y's symbols into the quantizer's stream
    (`streams()`: `[y, z]`); no `g_s`. `estimate`: also the likelihoods of the coded symbols
    (the rate estimate; lattice quantizers integrate over cells for them)."""

    mode = "encode"
    refines = True

    def __init__(self, quantizer, estimate: bool = True):
        super().__init__(quantizer)
        self.estimate = bool(estimate)
        self._streams: List[bytes] = []

    def main_transforms(self, ts):
        """Up to the last signalling transform: the encoder needs only what they choose."""
        last = max((i for i, t in enumerate(ts) if t.signals), default=-1)
        return list(ts[: last + 1])

    def accept(self, y, z):
        # before any coder sees them (NaN never ends a rANS escape code)
        check_finite("the latent y (g_a's output)", y)
        check_finite("the side latent z (h_a's output)", z)

    def side(self, bb, z):
        eb = bb.entropy_bottleneck
        z_str = eb.compress(z)
        self._z = z_str[0]
        z_hat = eb.decompress(z_str, tuple(z.shape[-2:]))
        return z_hat, eb(z)[1] if self.estimate else None  # the eval-mode likelihoods of the coded z_hat

    def main(self, bb, hyper, y):
        self.stream = self.q.open_encoder(bb.y_entropy_model)
        if bb.autoregressive:
            y_hat, params = code_context(bb, hyper, y, self, y.shape)
        else:
            params = bb.params(hyper, like=y)
            y_hat = self.q.encode(self.stream, y, params)
        lik = self.q.likelihood(y_hat, params) if self.estimate else None
        self._streams = [self.stream.finish()] + ([self._z] if bb.has_side else [])
        return y_hat, params, lik, {}, {}

    def step(self, y, params):
        return self.q.encode(self.stream, y, params)

    def reconstruct(self, g_s, y_hat, size):
        return None

    def streams(self):
        return self._streams


class Decode(Channel):
    """Decoding one image from its streams `[y, z]`: z from CompressAI's bottleneck stream, y's
    symbols from the quantizer's (position by position for context models); `x_hat` clamped to
    [0, 1]. `options`: the file's header options (the signalling transforms read them)."""

    mode = "decode"

    def __init__(self, quantizer, streams: Sequence[bytes], size, y_shape, z_shape=None,
                 options: Optional[Dict[str, Any]] = None, channels_last: bool = True):
        super().__init__(quantizer)
        #: run g_s on channels-last input on the CPU where that is exact (`exact_in_channels_last`)
        self.channels_last = channels_last
        self.strings = list(streams)
        self.size = (int(size[0]), int(size[1]))
        self.y_shape, self.z_shape = tuple(y_shape), None if z_shape is None else tuple(z_shape)
        self.options = {} if options is None else dict(options)

    def side(self, bb, z):
        return bb.entropy_bottleneck.decompress([self.strings[1]], self.z_shape), None

    def main(self, bb, hyper, y):
        self.stream = self.q.open_decoder(bb.y_entropy_model, self.strings[0])
        shape = (1, int(bb.M), *self.y_shape)
        if bb.autoregressive:
            y_hat, params = code_context(bb, hyper, None, self, shape)
        else:
            params = bb.params(hyper, like=bb.y_like(hyper, shape))
            y_hat = self.q.decode(self.stream, params)
        return y_hat, params, None, {}, {}

    def step(self, y, params):
        return self.q.decode(self.stream, params)

    def reconstruct(self, g_s, y_hat, size):
        if self.channels_last and channels_last_gives_the_same(g_s, y_hat):
            x_hat = g_s(y_hat.contiguous(memory_format=torch.channels_last)).contiguous()
        else:
            x_hat = g_s(y_hat)
        return x_hat[..., : size[0], : size[1]].clamp(0, 1)


class Identity(Channel):
    """No quantization: `y_hat = y`, `z_hat = z` (differentiable), priors from the unquantized
    latents; the likelihoods are the unit-bin masses at them. The decoder's trained transforms
    run, not the inference-time ones. The unquantized reconstruction X_uq = g_s(y) of the
    error decomposition (Rethinking Latent Variable, WACV 2026, eq. 11)."""

    mode = "identity"
    inference = False

    def side(self, bb, z):
        return z, bb.side_prior(z).likelihood(z)

    def main(self, bb, hyper, y):
        params = bb.params(hyper, like=y, ctx=bb.context(y) if bb.autoregressive else None)
        return y, params, params.likelihood(y), {}, {}
