"""The explicit codec pipeline: backbone stages + a swappable quantizer (DESIGN.md)."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecx.models.backbones import Backbone
from codecx.quantizers.base import Quantizer
from codecx.types import CodecOutput, EntropyParams


def pad_to(x: Tensor, stride: int) -> Tensor:
    """Replicate-pad `x` on the right and bottom to a multiple of `stride`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class Codec(nn.Module):
    """x -> g_a -> y -> (side info) -> (means, scales) -> quantizer -> y_hat -> g_s -> x_hat.

    One object for training (relaxed quantization), evaluation (hard quantization, the
    decoder's exact `y_hat`) and real coding (`compress` / `decompress`). Context models
    run the same serial loop for eval, encoding and decoding, so the three always agree.
    """

    def __init__(self, backbone: Backbone, quantizer: Quantizer, shift: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.quantizer = quantizer
        #: optional encoder-chosen latent shift (codecx.inference.latent_shift.LatentShift),
        #: applied in eval forward, compress and decompress; it has no state
        self.shift = shift

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> CodecOutput:
        """Relaxed pipeline in training; in eval mode the decoder's exact pipeline, run image
        by image as `compress` does (batched convolutions may differ in the last bit)."""
        if self.training or x.size(0) == 1:
            return self._forward(x)
        return _cat_outputs([self._forward(x[i : i + 1]) for i in range(x.size(0))])

    def _forward(self, x: Tensor) -> CodecOutput:
        h, w = x.shape[-2:]
        x_in, x = x, pad_to(x, self.backbone.stride)
        bb, q = self.backbone, self.quantizer
        shift = None if self.training else self.shift
        metrics = {}
        y = bb.g_a(x)
        z_hat, z_lik, hyper = bb.side(y)
        if shift is not None and z_hat is not None:
            z_shifted, k = shift.side_encode(self, y, z_hat)
            if k is not None:
                hyper, metrics["side_shift_index"] = bb.side_from_z_hat(z_shifted), torch.tensor([k])
        if not bb.autoregressive:
            params = bb.params(hyper, like=y)
            out = q(y, params)
            y_hat, y_lik = out.y_hat, out.likelihoods
        elif self.training:
            params = bb.params(hyper, like=y, ctx=bb.context(q.context_input(y)))
            out = q(y, params)
            y_hat, y_lik = out.y_hat, out.likelihoods
        else:
            y_hat, params = self._serial(hyper, lambda p, i: q.hard(y[i], p), y.shape)
            y_lik = q.likelihood(y_hat, params)
        if shift is not None:  # y_lik stays the rate of the coded (unshifted) symbols
            y_hat, k = shift.main_encode(self, x_in, y_hat, params)
            metrics["shift_index"] = torch.tensor([k])
        x_hat = bb.g_s(y_hat)[..., :h, :w]
        likelihoods = {"y": y_lik}
        if z_lik is not None:
            likelihoods["z"] = z_lik
        return CodecOutput(x_hat=x_hat, y=y, y_hat=y_hat, likelihoods=likelihoods,
                           params=params, z_hat=z_hat, metrics=metrics)

    def _serial(self, hyper: Tensor, step: Callable, shape) -> tuple[Tensor, EntropyParams]:
        """Visit latent positions in raster order, as the decoder must (mbt2018, cheng2020).

        `step(params, index)` returns `y_hat[index]` (shape (B, C)) for the prior `params`
        at that position. Returns the full `y_hat` and the full prior.
        """
        bb = self.backbone
        k = bb.kernel_size
        pad = (k - 1) // 2
        b, c, height, width = shape
        y_hat = hyper.new_zeros((b, c, height + 2 * pad, width + 2 * pad))
        means = hyper.new_zeros((b, c, height, width))
        scales = hyper.new_zeros((b, c, height, width))
        cp = bb.context_prediction
        weight = cp.weight * cp.mask
        for h in range(height):
            for w in range(width):
                crop = y_hat[:, :, h : h + k, w : w + k]
                ctx = F.conv2d(crop, weight, bias=cp.bias)
                p = bb.params(hyper[:, :, h : h + 1, w : w + 1], like=None, ctx=ctx)
                p = p[:, :, 0, 0]
                y_hat[:, :, h + pad, w + pad] = step(p, (slice(None), slice(None), h, w))
                means[:, :, h, w] = p.means
                scales[:, :, h, w] = p.scales
        y_hat = y_hat[:, :, pad : pad + height, pad : pad + width]
        return y_hat, EntropyParams(means, scales, bb.gaussian_conditional)

    # ------------------------------------------------------------------ coding
    def update(self, force: bool = False) -> bool:
        """Build the CDF tables of every entropy model (CompressAI's `update`)."""
        return self.backbone.update(force=force)

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict:
        """Encode a batch; returns per-image lists of streams `[y, z]` and the shapes, and with
        a latent shift also `options`: per image, the header options the decoder needs
        (`{"shift_index": k}`, plus `"side_shift_index"` with a side shift)."""
        self._check_updated()
        bb, q, shift = self.backbone, self.quantizer, self.shift
        h, w = x.shape[-2:]
        xp = pad_to(x, bb.stride)
        strings: List[List[bytes]] = []
        options: List[Dict] = []
        z_shape = y_shape = None
        for i in range(x.size(0)):  # image by image: entropy parameters never depend on the batch
            yi = bb.g_a(xp[i : i + 1])
            y_shape = tuple(yi.shape[-2:])
            streams: List[bytes] = []
            opts: Dict = {}
            if bb.family == "factorized":
                hyper = None
            else:
                z = bb.h_a(bb._h_a_input(yi))
                z_str = bb.entropy_bottleneck.compress(z)
                z_shape = tuple(z.shape[-2:])
                z_hat = bb.entropy_bottleneck.decompress(z_str, z_shape)
                if shift is not None:
                    z_hat, k = shift.side_encode(self, yi, z_hat)
                    if k is not None:
                        opts["side_shift_index"] = k
                hyper = bb.side_from_z_hat(z_hat)
            enc = q.open_encoder(self._y_model())
            if bb.autoregressive:
                y_hat, params = self._serial(hyper, lambda p, idx: q.encode(enc, yi[idx], p), yi.shape)
            else:
                params = bb.params(hyper, like=yi)
                y_hat = q.encode(enc, yi, params)
            if shift is not None:
                opts["shift_index"] = shift.main_encode(self, x[i : i + 1], y_hat, params)[1]
            streams.append(enc.finish())
            if hyper is not None:
                streams.append(z_str[0])
            strings.append(streams)
            options.append(opts)
        out = {"strings": strings, "shape": (h, w), "y_shape": y_shape, "z_shape": z_shape}
        if shift is not None:
            out["options"] = options
        return out

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape, y_shape, z_shape=None,
                   options=None) -> Tensor:
        """Decode what `compress` produced; returns `x_hat` clamped to [0, 1]. `options`: the
        per-image list `compress` returned (or one dict for every image); needed with a shift."""
        self._check_updated()
        bb, q, shift = self.backbone, self.quantizer, self.shift
        x_hats = []
        for i, streams in enumerate(strings):
            opts = options[i] if isinstance(options, (list, tuple)) else options
            if bb.family == "factorized":
                hyper = None
            else:
                z_hat = bb.entropy_bottleneck.decompress([streams[1]], tuple(z_shape))
                if shift is not None:
                    z_hat = shift.side_decode(self, z_hat, opts)
                hyper = bb.side_from_z_hat(z_hat)
            dec = q.open_decoder(self._y_model(), streams[0])
            y_full = (1, self._y_channels(), *y_shape)
            if bb.autoregressive:
                y_hat, params = self._serial(hyper, lambda p, idx: q.decode(dec, p), y_full)
            else:
                params = bb.params(hyper, like=self._like(hyper, y_full))
                y_hat = q.decode(dec, params)
            if shift is not None:
                y_hat = shift.main_decode(self, y_hat, params, opts)
            x_hats.append(bb.g_s(y_hat)[..., : shape[0], : shape[1]].clamp(0, 1))
        return torch.cat(x_hats, 0)

    def _check_updated(self) -> None:
        from compressai.entropy_models import EntropyModel

        if any(m._offset.numel() == 0 for m in self.modules() if isinstance(m, EntropyModel)):
            raise RuntimeError("the entropy models have no CDF tables yet: call "
                               "codec.update(force=True) before compress()/decompress()")

    def _y_model(self):
        bb = self.backbone
        return bb.entropy_bottleneck if bb.family == "factorized" else bb.gaussian_conditional

    def _y_channels(self) -> int:
        return int(self.backbone.M)

    def _like(self, hyper: Optional[Tensor], y_full) -> Tensor:
        """A tensor of y's shape (only its shape, dtype and device are used)."""
        ref = self.backbone.entropy_bottleneck._get_medians() if hyper is None else hyper
        return ref.new_zeros(y_full)


def _cat_outputs(outs: List[CodecOutput]) -> CodecOutput:
    """Concatenate per-image outputs along the batch dimension."""
    cat = lambda ts: None if ts[0] is None else torch.cat(ts, 0)  # noqa: E731
    p = outs[0].params
    params = EntropyParams(cat([o.params.means for o in outs]),
                           cat([o.params.scales for o in outs]), p.entropy_model)
    return CodecOutput(
        x_hat=cat([o.x_hat for o in outs]), y=cat([o.y for o in outs]),
        y_hat=cat([o.y_hat for o in outs]),
        likelihoods={k: cat([o.likelihoods[k] for o in outs]) for k in outs[0].likelihoods},
        params=params, z_hat=cat([o.z_hat for o in outs]),
        metrics={k: cat([o.metrics[k] for o in outs]) for k in outs[0].metrics})
