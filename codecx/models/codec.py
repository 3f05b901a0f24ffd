"""The explicit codec pipeline: backbone stages, a swappable quantizer and two hook points (DESIGN.md).

One walk of the stages (`Codec._walk`) serves training forward, eval forward, `compress` and
`decompress`; the four modes differ only in where the symbols go (nowhere, or a stream) and
come from (the encoder's latents, or a stream)::

    x ──g_a──> y ──h_a──> z   [encoder refiners: (y, z) -> (y, z); encoder only]
    z ──bottleneck──> z_hat ──[transforms' side hook]──h_s──> hyper
    hyper (+ serial context) ──> (means, scales) ──quantizer──> y_hat, likelihoods["y"]
    y_hat ──[latent transforms]──> y_hat' ──g_s──> x_hat
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecx.coding.context import code_context
from codecx.coding.rans import check_finite
from codecx.inference.base import EncoderRefiner
from codecx.models.backbones import Backbone
from codecx.quantizers.base import Quantizer
from codecx.transforms.base import LatentTransform, WalkState
from codecx.types import CodecOutput, EntropyParams


def pad_to(x: Tensor, stride: int) -> Tensor:
    """Replicate-pad `x` on the right and bottom to a multiple of `stride`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class _Symbols:
    """Where the y symbols of one walk go or come from: hard quantization (eval), a stream
    encoder (compress) or a stream decoder (decompress)."""

    def __init__(self, quantizer: Quantizer, mode: str, stream=None):
        self.q, self.mode, self.stream = quantizer, mode, stream

    def __call__(self, y: Optional[Tensor], params: EntropyParams) -> Tensor:
        if self.mode == "encode":
            return self.q.encode(self.stream, y, params)
        if self.mode == "decode":
            return self.q.decode(self.stream, params)
        return self.q.hard(y, params)


class Codec(nn.Module):
    """x -> g_a -> y -> (side info) -> (means, scales) -> quantizer -> y_hat -> transforms -> g_s -> x_hat.

    One object for training (relaxed quantization), evaluation (hard quantization, the
    decoder's exact `y_hat`) and real coding (`compress` / `decompress`), all walking the same
    stages (`_walk`), so the three always agree.

    Args:
        backbone: the transforms and entropy models (codecx.models.backbones).
        quantizer: how `y` becomes `y_hat` and what it costs (codecx.quantizers).
        transforms: latent transforms between `y_hat` and `g_s`, applied in order on both
            sides of the channel (codecx.transforms; latent shift is one).
        refiners: encoder refiners of `(y, z)` before coding (codecx.inference, e.g. SGA).
        lmbda: the rate-distortion trade-off the codec was trained for (refiners use it).
    """

    def __init__(self, backbone: Backbone, quantizer: Quantizer,
                 transforms: Sequence[LatentTransform] = (), refiners: Sequence[EncoderRefiner] = (),
                 lmbda: Optional[float] = None, shift: Optional[LatentTransform] = None):
        super().__init__()
        self.backbone = backbone
        self.quantizer = quantizer
        self.transforms = nn.ModuleList(list(transforms) + ([shift] if shift is not None else []))
        self.refiners = nn.ModuleList(refiners)
        self.lmbda = None if lmbda is None else float(lmbda)
        for t in self.transforms:
            t.attach(self)

    # ------------------------------------------------------------------ latent shift
    @property
    def shift(self) -> Optional[LatentTransform]:
        """The latent shift among the transforms (codecx.inference.latent_shift), or None."""
        from codecx.inference.latent_shift import LatentShift

        return next((t for t in self.transforms if isinstance(t, LatentShift)), None)

    def __setattr__(self, name, value):
        if name == "shift":  # nn.Module would register it as a submodule, bypassing the property
            type(self).shift.fset(self, value)
        else:
            super().__setattr__(name, value)

    @shift.setter
    def shift(self, value: Optional[LatentTransform]) -> None:
        from codecx.inference.latent_shift import LatentShift

        kept = [t for t in self.transforms if not isinstance(t, LatentShift)]
        if value is not None:
            value.attach(self)
        self.transforms = nn.ModuleList(kept + ([value] if value is not None else []))

    # ------------------------------------------------------------------ the walk
    def forward(self, x: Tensor) -> CodecOutput:
        """Relaxed pipeline in training; in eval mode the decoder's exact pipeline, run image
        by image as `compress` does (batched convolutions may differ in the last bit)."""
        if self.training:
            return self._walk("train", x)
        if x.size(0) == 1:
            return self._walk("eval", x)
        return _cat_outputs([self._walk("eval", x[i : i + 1]) for i in range(x.size(0))])

    def _walk(self, mode: str, x: Optional[Tensor] = None, streams: Optional[List[bytes]] = None,
              shape=None, y_shape=None, z_shape=None, options: Optional[Dict] = None,
              latents: Optional[Tuple[Tensor, Optional[Tensor]]] = None, estimate: bool = True):
        """The stages for one batch ("train") or one image ("eval", "encode", "decode").

        Returns a CodecOutput ("train", "eval"), `(streams, options, likelihoods)` ("encode":
        the likelihoods of the coded symbols, the rate estimate) or the clamped `x_hat`
        ("decode"). `latents` ("encode"): code these `(y, z)` instead of g_a / h_a's and the
        refiners' (what a refiner measures its candidates with). `estimate` ("encode"): also compute
        the likelihoods; False leaves them None (lattice quantizers integrate over cells for them).
        """
        bb, q = self.backbone, self.quantizer
        st = WalkState(self, mode, x=x, options={} if options is None else dict(options))
        transforms = [t for t in self.transforms if t.in_training or mode != "train"]
        if x is not None:
            h, w = x.shape[-2:]
            if latents is not None:
                y, z = latents
            else:
                y = bb.g_a(pad_to(x, bb.stride))
                z = bb.h_a(bb.h_a_input(y)) if bb.has_side else None
                if mode in ("eval", "encode"):
                    for r in self.refiners:
                        y, z = r(x, self, y, z, self.lmbda)
            if mode == "encode":  # before any coder sees them (NaN never ends a rANS escape code)
                check_finite("the latent y (g_a's output)", y)
                check_finite("the side latent z (h_a's output)", z)
            st.y = y
        else:
            h, w = shape
            y = None
        # side information
        out_streams: List[bytes] = []
        z_hat = z_lik = hyper = None
        if bb.has_side:
            eb = bb.entropy_bottleneck
            if mode == "encode":
                z_str = eb.compress(z)
                z_hat = eb.decompress(z_str, tuple(z.shape[-2:]))
                z_lik = eb(z)[1] if estimate else None  # the eval-mode likelihoods of the coded z_hat
            elif mode == "decode":
                z_hat = eb.decompress([streams[1]], tuple(z_shape))
            else:
                z_hat, z_lik = eb(z)
            z_coded = z_hat
            for t in transforms:
                z_hat = t.side(z_hat, st)
            hyper = bb.h_s(z_hat)
            z_hat = z_coded
        # the main latent
        y_lik = None
        if mode == "train":
            ctx = bb.context(q.context_input(y)) if bb.autoregressive else None
            params = bb.params(hyper, like=y, ctx=ctx)
            qout = q(y, params)
            y_hat, y_lik = qout.y_hat, qout.likelihoods
            st.losses.update(qout.losses)
            st.metrics.update(qout.metrics)
        else:
            stream = None
            if mode == "encode":
                stream = q.open_encoder(bb.y_entropy_model)
            elif mode == "decode":
                stream = q.open_decoder(bb.y_entropy_model, streams[0])
            symbols = _Symbols(q, mode, stream)
            if bb.autoregressive:
                full = y.shape if y is not None else (1, int(bb.M), *y_shape)
                y_hat, params = code_context(bb, hyper, y, symbols, full)
                if mode == "eval" or (mode == "encode" and estimate):
                    y_lik = q.likelihood(y_hat, params)
            elif mode == "eval":
                params = bb.params(hyper, like=y)
                qout = q(y, params)
                y_hat, y_lik = qout.y_hat, qout.likelihoods
                st.metrics.update(qout.metrics)
            else:
                like = y if y is not None else bb.y_like(hyper, (1, int(bb.M), *y_shape))
                params = bb.params(hyper, like=like)
                y_hat = symbols(y, params)
                if mode == "encode" and estimate:
                    y_lik = q.likelihood(y_hat, params)
            if mode == "encode":
                out_streams.append(stream.finish())
                if bb.has_side:
                    out_streams.append(z_str[0])
        st.params = params
        likelihoods = {"y": y_lik, **({"z": z_lik} if z_lik is not None else {})}
        if mode == "encode":  # the encoder needs only what the signalling transforms choose
            last = max((i for i, t in enumerate(transforms) if t.signals), default=-1)
            transforms = transforms[: last + 1]
        for t in transforms:  # y_lik stays the rate of the coded (untransformed) symbols
            y_hat = t(y_hat, st)
        if mode == "encode":
            return out_streams, st.options, likelihoods
        x_hat = bb.g_s(y_hat)[..., :h, :w]
        if mode == "decode":
            return x_hat.clamp(0, 1)
        return CodecOutput(x_hat=x_hat, y=y, y_hat=y_hat, likelihoods=likelihoods, params=params,
                           z_hat=z_hat, metrics=st.metrics, losses=st.losses)

    # ------------------------------------------------------------------ coding
    def update(self, force: bool = False) -> bool:
        """Build the CDF tables of every entropy model (CompressAI's `update`)."""
        return self.backbone.update(force=force)

    @torch.no_grad()
    def compress(self, x: Tensor, latents: Optional[Tuple[Tensor, Optional[Tensor]]] = None,
                 estimate: bool = True) -> Dict:
        """Encode a batch image by image (entropy parameters never depend on the batch);
        returns per-image lists of streams `[y, z]`, the shapes, `options`: per image, the
        header options the decoder needs (e.g. `{"shift_index": k}` with a latent shift), and
        `likelihoods`: per image, the likelihoods of the coded symbols (the rate estimate).
        `latents`: code these `(y, z)` (batched like `x`) instead of the encoder's (no g_a,
        h_a or refiners; how a refiner measures a candidate on the real bitstream). `estimate`
        False: skip the rate estimate (`likelihoods` None per image), what only coding needs."""
        self._check_updated()
        bb = self.backbone
        h, w = x.shape[-2:]
        y_shape, z_shape = bb.latent_shapes(h, w)
        strings, options, likelihoods = [], [], []
        for i in range(x.size(0)):
            one = None if latents is None else tuple(None if t is None else t[i : i + 1] for t in latents)
            streams, opts, lik = self._walk("encode", x[i : i + 1], latents=one, estimate=estimate)
            strings.append(streams)
            options.append(opts)
            likelihoods.append(lik if estimate else None)
        return {"strings": strings, "shape": (h, w), "y_shape": y_shape,
                "z_shape": z_shape if bb.has_side else None, "options": options,
                "likelihoods": likelihoods}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape, y_shape, z_shape=None,
                   options=None) -> Tensor:
        """Decode what `compress` produced; returns `x_hat` clamped to [0, 1]. `options`: the
        per-image list `compress` returned (or one dict for every image)."""
        self._check_updated()
        x_hats = []
        for i, streams in enumerate(strings):
            opts = options[i] if isinstance(options, (list, tuple)) else options
            x_hats.append(self._walk("decode", streams=streams, shape=shape, y_shape=tuple(y_shape),
                                     z_shape=z_shape, options=opts))
        return torch.cat(x_hats, 0)

    def _check_updated(self) -> None:
        from compressai.entropy_models import EntropyModel

        if any(m._offset.numel() == 0 for m in self.modules() if isinstance(m, EntropyModel)):
            raise RuntimeError("the entropy models have no CDF tables yet: call "
                               "codec.update(force=True) before compress()/decompress()")

    # ------------------------------------------------------------------ parameter groups
    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The backbone's named groups (g_a, h_a, h_s, entropy, context, g_s) and `transforms`."""
        groups = self.backbone.parameter_groups()
        groups["transforms"] = [p for t in self.transforms for p in t.parameters()]
        return groups


def _cat_outputs(outs: List[CodecOutput]) -> CodecOutput:
    """Concatenate per-image outputs along the batch dimension."""
    cat = lambda ts: None if ts[0] is None else torch.cat(ts, 0)  # noqa: E731
    p = outs[0].params
    params = EntropyParams(cat([o.params.means for o in outs]),
                           cat([o.params.scales for o in outs]), p.entropy_model)
    stack = lambda ts: torch.stack(ts).mean(0) if ts[0].dim() == 0 else torch.cat(ts, 0)  # noqa: E731
    return CodecOutput(
        x_hat=cat([o.x_hat for o in outs]), y=cat([o.y for o in outs]),
        y_hat=cat([o.y_hat for o in outs]),
        likelihoods={k: cat([o.likelihoods[k] for o in outs]) for k in outs[0].likelihoods},
        params=params, z_hat=cat([o.z_hat for o in outs]),
        metrics={k: stack([o.metrics[k] for o in outs]) for k in outs[0].metrics},
        losses={k: torch.stack([o.losses[k] for o in outs]).mean(0) for k in outs[0].losses})
