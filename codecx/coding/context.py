"""Fast, exact coding of the 5x5 masked-context models (mbt2018, cheng2020) (issue 33).

Minnen, Ballé, Toderici (arXiv:1809.02736) and Cheng et al. (arXiv:2001.01568) code `y` in
raster order: the prior (means, scales) of a position depends, through a 5x5 masked
convolution ("type A": rows above and the left neighbours), on `y_hat` at earlier positions.
CompressAI computes each position with a `conv2d` of its 5x5 crop and the 1x1 convolutions of
`entropy_parameters`, and converts its CDF tables at every call of its rANS decoder. Here:

* **encoder** (and the eval forward): `y` is known, so only `y_hat` = symbol + mean feeds
  later positions. Position (h, w) reads (h, w-1) and (h-1, w+2), (h-2, w+2), so the positions
  of one wavefront `3h + w = t` are independent given the earlier ones: 3H + W - 3 batched
  steps instead of H*W; then every symbol is coded in raster order, in one call for scalar
  quantizers.
* **decoder**: per position only what it needs, without per-call overhead: the context
  convolution with its weights pre-packed once (oneDNN reorders them at every plain `conv2d`),
  on the 3 kernel rows the mask leaves non-zero; the 1x1 layers as matrix-vector products; the
  compiled rANS decoder of `codecx.coding.rans` (tables kept as arrays); no per-level index loop.

Exactness: the decoder must reproduce the encoder's `y_hat` bit for bit, and codecx's streams
and decoded images equal CompressAI's. Every batched form used here computes, per output
element, the same floating-point operations as CompressAI's per-position calls, which on this
CPU (oneDNN direct convolution, MKL) was checked empirically and is asserted by the tests:
the context convolution is independent of the batch, of laying the crops side by side with a
column stride, and of dropping all-zero trailing kernel rows; a 1x1 convolution of one position
is one matrix-vector product, which `baddbmm` of a batch of (1, K) rows also runs per row (a
plain matrix product of the batch is not: its blocking changes the summation order). Encoder
and decoder call the same functions (`_Kernels`), so they agree even where CompressAI would not.
A backbone whose context model has another structure, a batch of several images, or a model
outside that arithmetic (GPU, float64, oneDNN disabled) takes `Backbone.serial` (position by
position, as before).
"""
from __future__ import annotations

import weakref
from functools import lru_cache
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecx.types import EntropyParams

__all__ = ["code_context", "context_kernels"]

#: layers of `entropy_parameters` that act element by element (any batch layout gives equal floats)
_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Identity)


def _prepack_available() -> bool:
    try:
        return hasattr(torch.ops.mkldnn_prepacked, "conv2d_prepack") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


_PREPACK = _prepack_available()


def _type_a_mask(k: int) -> Tensor:
    """The causal mask of a k x k "type A" masked convolution (PixelCNN; CompressAI's MaskedConv2d)."""
    m = torch.ones(k, k)
    m[k // 2, k // 2:] = 0
    m[k // 2 + 1:] = 0
    return m


class _Kernels:
    """A context model's prior arithmetic, prepared once per set of weights (and device, dtype):
    the masked convolution on the kernel rows the mask keeps, and `entropy_parameters` as a
    chain of per-position matrix-vector products."""

    def __init__(self, backbone, device, dtype):
        cp = backbone.context_prediction
        self.k = int(cp.kernel_size[0])
        self.pad = self.k // 2
        self.slope = self.pad + 1  # wavefront t = slope * h + w (the mask reaches (h-1, w+pad))
        self.rows = self.pad + 1  # kernel rows below the centre are masked to zero
        to = dict(device=device, dtype=dtype)
        with torch.no_grad():
            weight = cp.weight * cp.mask  # CompressAI's masked weight (same product)
            self.weight = weight[:, :, : self.rows].to(**to).contiguous()
            self.bias = cp.bias.detach().to(**to).clone()
            self.layers: List[Tuple[str, object, Optional[Tensor]]] = []
            for m in backbone.entropy_parameters:
                if isinstance(m, nn.Conv2d):  # (in, out) view of the (out, in) weight, as F.linear's
                    w = m.weight.detach().flatten(1).to(**to).clone()
                    self.layers.append(("linear", w.t(), m.bias.detach().to(**to).clone().view(1, 1, -1)))
                else:
                    self.layers.append(("elementwise", m, None))
        self.prepacked = _PREPACK and torch.device(device).type == "cpu" and dtype == torch.float32
        self._packed = {}
        self._batch_ok = {}

    def packed(self, shape):
        """The convolution with its weights reordered once for inputs of `shape` (oneDNN)."""
        p = self._packed.get(shape)
        if p is None:
            p = self._packed[shape] = torch.ops.mkldnn_prepacked.conv2d_prepack(
                self.weight, self.bias, [1, self.k], [0, 0], [1, 1], 1, list(shape), "none")
        return p

    def context(self, crops: Tensor) -> Tensor:
        """Masked convolution of crops laid side by side, (1, C, rows, k * n) -> (n, 2M)."""
        if self.prepacked:
            crops = crops.contiguous()
            out = torch.ops.mkldnn_prepacked.conv2d_run(crops, self.packed(tuple(crops.shape)))
        else:
            out = F.conv2d(crops, self.weight, self.bias, stride=(1, self.k))
        return out[0, :, 0].t()

    def entropy_parameters(self, v: Tensor) -> Tensor:
        """`entropy_parameters` of n positions (n, K) -> (n, 2M), one matrix-vector product per
        position and layer (`baddbmm` of (1, K) rows), CompressAI's 1x1 conv2d at batch 1."""
        v = v.unsqueeze(1)
        for i, (kind, a, b) in enumerate(self.layers):
            if kind != "linear":
                v = a(v)
            elif v.size(0) == 1 or self._rows_batch(i):
                v = _rows(v, a, b)
            else:  # this layer's product at batch 1 is not what a batch computes per row
                v = torch.cat([_rows(v[j: j + 1], a, b) for j in range(v.size(0))])
        return v.squeeze(1)

    def _rows_batch(self, i: int) -> bool:
        """Whether layer i computed for a batch of rows gives each row's floats of a batch of one.
        With several threads MKL splits some matrix-vector products (sizes not a multiple of 16:
        cheng2020 at N=128) while a batch runs each row on one thread; probed once per thread
        count on random rows (the split depends on the sizes and threads only)."""
        key = (i, torch.get_num_threads())
        ok = self._batch_ok.get(key)
        if ok is None:
            _, a, b = self.layers[i]
            g = torch.Generator().manual_seed(i)
            probe = torch.randn(4, 1, a.size(0), generator=g).to(a)
            one = torch.cat([_rows(probe[j: j + 1], a, b) for j in range(4)])
            ok = self._batch_ok[key] = bool(torch.equal(_rows(probe, a, b), one))
        return ok


def _rows(v: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """A 1x1 convolution of n positions (n, 1, K) -> (n, 1, N) (`a` its (K, N) weight, `b`
    its (1, 1, N) bias): one matrix-vector product each."""
    n = v.size(0)
    return torch.baddbmm(b.expand(n, 1, -1), v, a.expand(n, -1, -1))


def _supported(backbone) -> bool:
    """True when the context model is the 5x5 type-A masked convolution + 1x1 layers of
    mbt2018 / cheng2020 (what `_Kernels` reproduces)."""
    cp = getattr(backbone, "context_prediction", None)
    ep = getattr(backbone, "entropy_parameters", None)
    if not isinstance(cp, nn.Conv2d) or not isinstance(ep, nn.Sequential) or cp.bias is None:
        return False
    k = cp.kernel_size[0]
    if (cp.kernel_size != (k, k) or k % 2 == 0 or cp.stride != (1, 1) or cp.dilation != (1, 1)
            or cp.groups != 1 or not hasattr(cp, "mask")):
        return False
    mask = cp.mask
    if tuple(mask.shape[-2:]) != (k, k) or not torch.equal(mask.detach().cpu().reshape(-1, k, k)[0], _type_a_mask(k)):
        return False
    if not bool((mask == mask.reshape(-1, k, k)[:1]).all()):
        return False
    for m in ep:
        if isinstance(m, nn.Conv2d):
            if (m.kernel_size != (1, 1) or m.stride != (1, 1) or m.padding != (0, 0) or m.groups != 1
                    or m.bias is None):
                return False
        elif not isinstance(m, _ELEMENTWISE):
            return False
    return True


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def context_kernels(backbone, device="cpu", dtype=torch.float32) -> Optional[_Kernels]:
    """The backbone's `_Kernels` for `device` and `dtype`, or None when its context model is
    not the standard one. Rebuilt when a weight changed: compared by value (a few ms), since
    edits through `.data` (CompressAI's MaskedConv2d, EMA copies) leave no version behind."""
    if not _supported(backbone):
        return None
    with torch.no_grad():
        tensors = [t.detach() for t in (backbone.context_prediction.weight, backbone.context_prediction.bias,
                                         backbone.context_prediction.mask, *backbone.entropy_parameters.parameters())]
        entries = _CACHE.setdefault(backbone, {})
        hit = entries.get((str(device), dtype))
        if hit is not None and len(hit[0]) == len(tensors) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], tensors)):
            return hit[1]
        kern = _Kernels(backbone, device, dtype)
        entries[(str(device), dtype)] = ([t.clone() for t in tensors], kern)
    return kern


@lru_cache(maxsize=16)
def _wavefronts(height: int, width: int, k: int, slope: int, rows: int, device: str):
    """Per wavefront t = slope*h + w: (crop indices into the padded y_hat (C, Hp*Wp) flattened,
    laid out (rows, n, k); centre indices there; position indices h*W + w)."""
    pad = k // 2
    wp = width + 2 * pad
    r = torch.arange(rows).view(rows, 1, 1)
    c = torch.arange(k).view(1, 1, k)
    out = []
    for t in range(slope * (height - 1) + width):
        h = torch.arange(max(0, -(-(t - width + 1) // slope)), min(height - 1, t // slope) + 1)
        w = t - slope * h
        crops = ((h.view(1, -1, 1) + r) * wp + (w.view(1, -1, 1) + c)).reshape(-1)
        centre = (h + pad) * wp + (w + pad)
        out.append((crops.to(device), centre.to(device), (h * width + w).to(device), int(h.numel())))
    return out


def _positions(t: Tensor) -> Tensor:
    """(1, C, H, W) -> (H*W, C), positions in raster order."""
    return t[0].flatten(1).t().contiguous()


def _as_map(t: Tensor, height: int, width: int) -> Tensor:
    """(H*W, C) -> (1, C, H, W)."""
    return t.t().reshape(1, -1, height, width).contiguous()


def _wavefront_hard(kern: _Kernels, backbone, quantizer, hyper: Tensor, y: Tensor):
    """y_hat and the prior (H*W, 2M: scales, means) of every position, wavefront by wavefront
    (encoder, eval)."""
    gc = backbone.gaussian_conditional
    _, c, height, width = y.shape
    pad, rows, k = kern.pad, kern.rows, kern.k
    y_pad = y.new_zeros(c, (height + 2 * pad) * (width + 2 * pad))
    y_pos, hyper_pos = _positions(y), _positions(hyper)
    prior = None
    for crops, centre, pos, n in _wavefronts(height, width, k, kern.slope, rows, str(y.device)):
        ctx = kern.context(y_pad.index_select(1, crops).view(1, c, rows, n * k))
        gp = kern.entropy_parameters(torch.cat((hyper_pos.index_select(0, pos), ctx), 1))
        if prior is None:
            prior = gp.new_empty(height * width, gp.size(1))
        s, m = gp.chunk(2, 1)
        y_hat = quantizer.hard(y_pos.index_select(0, pos), EntropyParams(m, s, gc))
        y_pad.index_copy_(1, centre, y_hat.t())
        prior.index_copy_(0, pos, gp)
    y_hat = y_pad.view(c, height + 2 * pad, width + 2 * pad)[:, pad: pad + height, pad: pad + width]
    return y_hat.unsqueeze(0).contiguous(), prior, y_pos


def _serial_decode(kern: _Kernels, backbone, channel, hyper: Tensor, shape):
    """y_hat and the prior (H*W, 2M: scales, means), position by position in raster order
    (decoder). Per position only its own arithmetic, into buffers allocated once: the crop's
    convolution, the 1x1 layers (`baddbmm` of one row, the last writing the prior's row), and
    the quantizer's `position_decoder` where it has one (else `channel.step`)."""
    gc = backbone.gaussian_conditional
    _, c, height, width = shape
    pad, k, rows = kern.pad, kern.k, kern.rows
    y_pad = hyper.new_zeros(1, c, height + 2 * pad, width + 2 * pad)
    hyper_pos = _positions(hyper)
    n_hyper = hyper_pos.size(1)
    crop = hyper.new_empty(1, c, rows, k)
    context = kern.context
    if kern.prepacked:  # the same call as `kern.context`, without its per-call checks
        packed = kern.packed((1, c, rows, k))

        def context(crop):
            return torch.ops.mkldnn_prepacked.conv2d_run(crop, packed)
    n_ctx = kern.weight.size(0)
    v = hyper.new_empty(1, 1, n_hyper + n_ctx)  # torch.cat((hyper, ctx)) of one position
    # the 1x1 layers: (weight as a batch of one, bias, output buffer) or the elementwise module
    steps, width_out = [], n_hyper + n_ctx
    for kind, a, b in kern.layers:
        if kind == "linear":
            width_out = a.size(1)
            steps.append((a.unsqueeze(0), b, hyper.new_empty(1, 1, width_out)))
        else:
            steps.append((a, None, None))
    last = max(i for i, st in enumerate(steps) if st[1] is not None)
    prior = hyper.new_empty(height * width, width_out)
    decode = channel.q.position_decoder(channel.stream, gc)
    i = 0
    for h in range(height):
        for w in range(width):
            crop.copy_(y_pad[:, :, h: h + rows, w: w + k])
            v[0, 0, :n_hyper] = hyper_pos[i]
            v[0, 0, n_hyper:] = context(crop).reshape(-1)
            t = v
            for j, (a, b, out) in enumerate(steps):
                if b is None:
                    t = _elementwise(a, t)
                else:
                    out = prior[i: i + 1].view(1, 1, -1) if j == last else out
                    t = torch.baddbmm(b, t, a, out=out)
            s, m = prior[i: i + 1].chunk(2, 1)
            if decode is not None:
                decode(s, m, y_pad[:, :, h + pad, w + pad])
            else:
                y_pad[0, :, h + pad, w + pad] = channel.step(None, EntropyParams(m, s, gc))[0]
            i += 1
    return y_pad[:, :, pad: pad + height, pad: pad + width].contiguous(), prior


def _elementwise(module: nn.Module, t: Tensor) -> Tensor:
    """An elementwise layer of `entropy_parameters` on a buffer the decoder owns: LeakyReLU and
    ReLU in place (the same values), any other through the module."""
    if type(module) is nn.LeakyReLU:
        return F.leaky_relu_(t, module.negative_slope)
    if type(module) is nn.ReLU:
        return F.relu_(t)
    return module(t)


def code_context(backbone, hyper: Tensor, y: Optional[Tensor], channel, shape) -> Tuple[Tensor, EntropyParams]:
    """`y_hat` and its prior for an autoregressive backbone, through the walk's `channel`
    (codecx.quantizers.channels): `channel.step(y, params)` gives one position's `y_hat` (hard
    quantization, or its symbols pushed to / pulled from `channel.stream`); `y` None: decoding
    (the symbols come from the stream); a `channel.stream` with `y`: encoding (the symbols go
    to it). `shape` y's (1, C, H, W). The fast exact path above, or `backbone.serial` for other
    context models and batches."""
    from codecx.quantizers.scalar import ScalarQuantizer

    # the exactness above is oneDNN's and MKL's float32 arithmetic on the CPU; elsewhere (GPU,
    # float64, oneDNN disabled) the batched forms may round differently: position by position
    fast = (hyper.device.type == "cpu" and hyper.dtype == torch.float32 and shape[0] == 1
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    kern = context_kernels(backbone, hyper.device, hyper.dtype) if fast else None
    if kern is None:
        return backbone.serial(hyper, lambda p, i: channel.step(None if y is None else y[i], p), shape)
    q, gc = channel.q, backbone.gaussian_conditional
    height, width = int(shape[2]), int(shape[3])
    with torch.no_grad():
        if y is None:
            y_hat, prior = _serial_decode(kern, backbone, channel, hyper, shape)
        else:
            y_hat, prior, y_pos = _wavefront_hard(kern, backbone, q, hyper, y)
            if channel.stream is not None:  # encoding: the symbols in the decoder's (raster) order
                s, m = prior.chunk(2, 1)
                if isinstance(q, ScalarQuantizer):
                    q.encode(channel.stream, y_pos, EntropyParams(m, s, gc))
                else:
                    for i in range(height * width):
                        q.encode(channel.stream, y_pos[i: i + 1], EntropyParams(m[i: i + 1], s[i: i + 1], gc))
    scales, means = prior.chunk(2, 1)
    return y_hat, EntropyParams(_as_map(means, height, width), _as_map(scales, height, width), gc)
