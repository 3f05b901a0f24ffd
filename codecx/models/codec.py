"""The explicit codec pipeline: backbone stages, a swappable quantizer and two hook points (DESIGN.md).

One walk of the stages (`Codec.walk`) serves training forward, eval forward, `compress`,
`decompress` and the refiners' and diagnostics' walks; a *channel* (codecx.quantizers.channels)
says how the latents cross (relaxed, hard, into streams, from streams, unquantized, SGA), and
the walk asks it instead of testing a mode. It returns one `CodecOutput` whatever the channel::

    x ──g_a──> y ──h_a──> z   [encoder refiners: (y, z) -> (y, z); where the channel refines]
    z ──channel.side──> z_hat ──[transforms' side hook]──h_s──> hyper
    hyper (+ serial context) ──channel.main──> y_hat, prior, likelihoods["y"]
    y_hat ──[latent transforms]──> y_hat' ──channel.reconstruct (g_s)──> x_hat
"""
from __future__ import annotations

import dataclasses
from copy import deepcopy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecx.inference.base import EncoderRefiner
from codecx.models.backbones import Backbone
from codecx.quantizers.base import Quantizer
from codecx.quantizers.channels import Channel, Decode, Encode, Hard, Relaxed
from codecx.transforms.base import LatentTransform, WalkState
from codecx.types import CodecOutput


#: the distortion of a codec configured without one (a bare CompressAI state dict): `distortion=mse`'s node
DEFAULT_DISTORTION = {"_target_": "codecx.losses.MSE"}


def pad_to(x: Tensor, stride: int) -> Tensor:
    """Replicate-pad `x` on the right and bottom to a multiple of `stride`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class Codec(nn.Module):
    """x -> g_a -> y -> (side info) -> (means, scales) -> quantizer -> y_hat -> transforms -> g_s -> x_hat.

    One object for training (relaxed quantization), evaluation (hard quantization, the
    decoder's exact `y_hat`) and real coding (`compress` / `decompress`), all walking the same
    stages (`walk`, through a channel), so the three always agree.

    Args:
        backbone: the transforms and entropy models (codecx.models.backbones).
        quantizer: how `y` becomes `y_hat` and what it costs (codecx.quantizers).
        transforms: latent transforms between `y_hat` and `g_s`, applied in order on both
            sides of the channel (codecx.transforms); eval-time ones (`in_training=False`,
            e.g. the latent shift) are skipped in training.
        refiners: encoder refiners of `(y, z)` before coding (codecx.inference, e.g. SGA).
        lmbda: the rate-distortion trade-off the codec was trained for (refiners use it).
        distortion: the configured distortion (a codecx.losses module or its `_target_` node,
            built when first used; None: 255^2 MSE), what refiners and inference-time
            transforms judge reconstructions with.
    """

    def __init__(self, backbone: Backbone, quantizer: Quantizer,
                 transforms: Sequence[LatentTransform] = (), refiners: Sequence[EncoderRefiner] = (),
                 lmbda: Optional[float] = None, distortion: Any = None):
        super().__init__()
        self.distortion = distortion
        self.backbone = backbone
        self.quantizer = quantizer
        self.transforms = nn.ModuleList(transforms)
        self.refiners = nn.ModuleList(refiners)
        self.lmbda = None if lmbda is None else float(lmbda)
        for t in self.transforms:
            t.attach(self.view)

    def __setattr__(self, name, value):
        if name == "distortion":  # nn.Module would register it as a submodule, bypassing the property
            getattr(type(self), name).fset(self, value)
        else:
            super().__setattr__(name, value)

    def add_transforms(self, *transforms: LatentTransform) -> "Codec":
        """Append latent transforms after the codec's own (e.g. an eval-time one such as the
        latent shift on a trained codec; `codecx.eval.load.load_codec(transform=...)` does it
        from config), attached to the codec's view; returns the codec."""
        for t in transforms:
            t.attach(self.view)
            self.transforms.append(t)
        return self

    # ------------------------------------------------------------------ the walk
    def forward(self, x: Tensor) -> CodecOutput:
        """Relaxed pipeline in training; in eval mode the decoder's exact pipeline, run image
        by image as `compress` does (batched convolutions may differ in the last bit)."""
        if self.training:
            return self.walk(Relaxed(self.quantizer), x)
        if x.size(0) == 1:
            return self.walk(Hard(self.quantizer), x)
        return _cat_outputs([self.walk(Hard(self.quantizer), x[i : i + 1]) for i in range(x.size(0))])

    def walk(self, channel: Channel, x: Optional[Tensor] = None,
             latents: Optional[Tuple[Tensor, Optional[Tensor]]] = None) -> CodecOutput:
        """The stages for one batch (training) or one image, through `channel`
        (codecx.quantizers.channels). `x`: the unpadded image (None at the decoder, whose
        channel knows the size); `latents`: walk these `(y, z)` instead of g_a / h_a's and the
        refiners' (what a refiner measures its candidates with)."""
        bb = self.backbone
        st = WalkState(self.view, channel.mode, x=x, options=dict(channel.options))
        transforms = channel.transforms(self.transforms)
        y = z = None
        if latents is not None:
            y, z = latents
        elif x is not None:
            y, z = self.analyse(x)
            if channel.refines:
                y, z = self.refine(x, y, z)
        channel.accept(y, z)
        st.y = y
        z_hat = z_lik = hyper = None
        if bb.has_side:
            z_hat, z_lik = channel.side(bb, z)
            z_in = z_hat
            for t in transforms:
                z_in = t.side(z_in, st)
            hyper = bb.h_s(z_in)
        y_hat, st.params, y_lik, metrics, losses = channel.main(bb, hyper, y)
        st.metrics.update(metrics)
        st.losses.update(losses)
        for t in channel.main_transforms(transforms):  # y_lik stays the rate of the coded (untransformed) symbols
            y_hat = t(y_hat, st)
        size = channel.size if x is None else tuple(x.shape[-2:])
        likelihoods = {"y": y_lik, **({"z": z_lik} if z_lik is not None else {})}
        return CodecOutput(x_hat=channel.reconstruct(bb.g_s, y_hat, size), y=y, y_hat=y_hat,
                           likelihoods=likelihoods, params=st.params, z_hat=z_hat, metrics=st.metrics,
                           losses=st.losses, streams=channel.streams(), options=st.options)

    def analyse(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """`(y, z)` of the unpadded image(s) `x`: g_a, then h_a (z None without side information)."""
        bb = self.backbone
        y = bb.g_a(pad_to(x, bb.stride))
        return y, bb.h_a(bb.h_a_input(y)) if bb.has_side else None

    def refine(self, x: Tensor, y: Tensor, z: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """The encoder refiners, in order, on the latents of `x` (a batch of one size in one call)."""
        for r in self.refiners:
            y, z = r(x, self.view, y, z, self.lmbda)
        return y, z

    @torch.no_grad()
    def encoder_latents(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The `(y, z)` the encoder codes for a batch `x` of images of one size: g_a and h_a image
        by image (as `compress`: the same bits as alone), then the refiners over the whole batch
        in one call (SGA optimises every image at once); `compress(x, latents=...)` codes them."""
        per_image = [self.analyse(x[i : i + 1]) for i in range(x.size(0))]
        y = torch.cat([p[0] for p in per_image])
        z = torch.cat([p[1] for p in per_image]) if per_image[0][1] is not None else None
        return self.refine(x, y, z)

    @property
    def view(self) -> "CodecView":
        """What latent transforms and encoder refiners see of this codec (`CodecView`)."""
        return CodecView(self)

    @property
    def distortion(self):
        """The configured distortion (`distortion=`, codecx.losses), what refiners and
        inference-time transforms judge reconstructions with; 255^2 MSE when none was given."""
        d = self.__dict__.get("_distortion")
        if d is None or isinstance(d, Mapping):
            from hydra.utils import instantiate

            d = instantiate(dict(DEFAULT_DISTORTION if d is None else d))
            self.__dict__["_distortion"] = d
        return d

    @distortion.setter
    def distortion(self, value) -> None:
        # kept outside the module tree: the state dict stays the backbone's, quantizer's and transforms'
        self.__dict__["_distortion"] = value

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
            out = self.walk(Encode(self.quantizer, estimate), x[i : i + 1], latents=one)
            strings.append(out.streams)
            options.append(out.options)
            likelihoods.append(out.likelihoods if estimate else None)
        return {"strings": strings, "shape": (h, w), "y_shape": y_shape,
                "z_shape": z_shape if bb.has_side else None, "options": options,
                "likelihoods": likelihoods}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape, y_shape, z_shape=None,
                   options=None, channels_last: bool = True) -> Tensor:
        """Decode what `compress` produced; returns `x_hat` clamped to [0, 1]. `options`: the
        per-image list `compress` returned (or one dict for every image). `channels_last`: the
        synthesis in channels-last memory format on the CPU where that gives the same image
        (checked per shape on this CPU: codecx.quantizers.channels.channels_last_gives_the_same); False: NCHW."""
        self._check_updated()
        x_hats = []
        for i, streams in enumerate(strings):
            opts = options[i] if isinstance(options, (list, tuple)) else options
            channel = Decode(self.quantizer, streams, shape, y_shape, z_shape, opts, channels_last)
            x_hats.append(self.walk(channel).x_hat)
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
    params = dataclasses.replace(p, means=cat([o.params.means for o in outs]),
                                 scales=cat([o.params.scales for o in outs]))
    stack = lambda ts: torch.stack(ts).mean(0) if ts[0].dim() == 0 else torch.cat(ts, 0)  # noqa: E731
    return CodecOutput(
        x_hat=cat([o.x_hat for o in outs]), y=cat([o.y for o in outs]),
        y_hat=cat([o.y_hat for o in outs]),
        likelihoods={k: cat([o.likelihoods[k] for o in outs]) for k in outs[0].likelihoods},
        params=params, z_hat=cat([o.z_hat for o in outs]),
        metrics={k: stack([o.metrics[k] for o in outs]) for k in outs[0].metrics},
        losses={k: torch.stack([o.losses[k] for o in outs]).mean(0) for k in outs[0].losses})


class CodecView:
    """What latent transforms and encoder refiners see of a codec (issue 30): the synthesis
    `g_s`, the quantizer, the prior (`side_prior`, `hyper`, `params`, `context`), the strides
    and latent width, the trade-off `lmbda` and the configured `distortion`, and the walk
    (`walk`, `code`) -- not the analysis transforms, the parameters or the module tree."""

    __slots__ = ("_codec",)

    def __init__(self, codec: Codec):
        self._codec = codec

    # the decoder's stages
    def g_s(self, y_hat: Tensor) -> Tensor:
        return self._codec.backbone.g_s(y_hat)

    def synthesize(self, y_hat: Tensor, size) -> Tensor:
        """`g_s(y_hat)` cropped to the image size `size` (h, w), as the walk does."""
        return self._codec.backbone.g_s(y_hat)[..., : size[0], : size[1]]

    @property
    def quantizer(self) -> Quantizer:
        return self._codec.quantizer

    # the prior
    def side_prior(self, like: Tensor):
        """The side latent's factorized prior as entropy parameters (Backbone.side_prior)."""
        return self._codec.backbone.side_prior(like)

    def hyper(self, z_hat: Tensor) -> Tensor:
        """The hyper synthesis h_s of a side latent."""
        return self._codec.backbone.side_from_z_hat(z_hat)

    def params(self, hyper: Optional[Tensor], like: Tensor, ctx: Optional[Tensor] = None):
        """The prior's entropy parameters of y (Backbone.params)."""
        return self._codec.backbone.params(hyper, like=like, ctx=ctx)

    # shapes
    @property
    def M(self) -> int:
        """Latent channels of y."""
        return int(self._codec.backbone.M)

    @property
    def stride(self) -> int:
        """Input sizes are padded to multiples of this."""
        return self._codec.backbone.stride

    @property
    def latent_stride(self) -> int:
        """g_s's upsampling (y is this many times smaller than the padded image)."""
        return int(self._codec.backbone.latent_stride)

    @property
    def has_side(self) -> bool:
        return bool(self._codec.backbone.has_side)

    @property
    def autoregressive(self) -> bool:
        return bool(self._codec.backbone.autoregressive)

    # the objective
    @property
    def lmbda(self) -> Optional[float]:
        return self._codec.lmbda

    @property
    def distortion(self):
        return self._codec.distortion

    # walking and coding
    def walk(self, channel: Channel, x: Optional[Tensor] = None,
             latents: Optional[Tuple[Tensor, Optional[Tensor]]] = None) -> CodecOutput:
        """`Codec.walk`."""
        return self._codec.walk(channel, x, latents)

    def code(self, x: Tensor, latents: Tuple[Tensor, Optional[Tensor]]) -> Tuple[List[List[bytes]], Tensor]:
        """(per-image streams, decoded images) of coding `latents` (batched like `x`) for real:
        `Codec.compress(x, latents, estimate=False)`, then `decompress`."""
        enc = self._codec.compress(x, latents=latents, estimate=False)
        x_hat = self._codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"],
                                       enc["options"])
        return enc["strings"], x_hat

    def check_updated(self) -> None:
        """RuntimeError when the entropy models have no CDF tables yet (`Codec.update`)."""
        self._codec._check_updated()

    def on(self, device) -> "CodecView":
        """The view of a copy of the codec on `device` (a refiner optimising on a GPU while the
        codec codes on the CPU), or this view when the codec is there already."""
        codec, device = self._codec, torch.device(device)
        here = next(codec.parameters(), torch.empty(0)).device
        if here.type == device.type and (device.index is None or here.index == device.index):
            return self
        copy = deepcopy(codec).to(device)
        copy.distortion = deepcopy(codec.distortion).to(device)  # kept outside the module tree
        return CodecView(copy)
