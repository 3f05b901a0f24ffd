"""Fast coding of the context models (codecx.coding.context, issue 33): codecx's streams equal
CompressAI's byte for byte and its decoded images CompressAI's decoded images, at 1 and 2 threads;
the wavefront encoder and the lean decoder equal the position-by-position reference
(`Backbone.serial`) for scalar and lattice quantizers; the compiled rANS decoder equals
CompressAI's; other context models fall back to `serial`."""
from __future__ import annotations

import pytest
import torch
from compressai.ans import RansDecoder
from compressai.entropy_models import GaussianConditional
from compressai.models.google import get_scale_table

from codecx.coding import context
from codecx.coding.rans import RansStreamDecoder, RansStreamEncoder, _Tables
from codecx.models import Codec, build_backbone
from codecx.quantizers import LatticeQuantizer, NoiseQuantizer
from codecx.quantizers.channels import Hard
from codecx.types import EntropyParams

#: sizes where every 1x1 layer has a width that is not a multiple of 16 (MKL splits those
#: matrix-vector products across threads: the case that needs `_Kernels._rows_batch`)
SIZES = {"mbt": (16, 40), "cheng_anchor": (32, None), "cheng_attn": (32, None)}


def _codec(name: str, levels: int = 64, seed: int = 0) -> Codec:
    torch.manual_seed(seed)
    N, M = SIZES[name]
    bb = build_backbone(name, N=N, M=M, scale_levels=levels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if "entropy_bottleneck" in n and not n.endswith("quantiles"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        [m for m in bb.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(8)  # a few units
    codec = Codec(bb, NoiseQuantizer()).eval()
    codec.update(force=True)
    return codec


def _compressai(codec):
    """The plain CompressAI class with the codec's state dict and CDF tables."""
    import inspect

    bb = codec.backbone
    cls = next(c for c in type(bb).__mro__ if c.__module__.split(".")[0] == "compressai")
    kwargs = {"N": int(bb.N), **({"M": int(bb.M)} if "M" in inspect.signature(cls.__init__).parameters else {})}
    net = cls(**kwargs)
    net.load_state_dict(bb.state_dict())
    net.eval().update(scale_table=bb.gaussian_conditional.scale_table.clone(), force=True)
    return net


# two threads: ~7 s a model on 2 shared cores, so in the medium tier (make test runs it; test-quick does not)
@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.medium)])
@pytest.mark.parametrize("name", list(SIZES))
def test_streams_and_images_equal_compressai(name, threads):
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        codec = _codec(name)
        net = _compressai(codec)
        x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = codec(x)
            c = codec.compress(x)
            d = codec.decompress(c["strings"], c["shape"], c["y_shape"], c["z_shape"])
            enc = net.compress(x)
            dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    finally:
        torch.set_num_threads(n)
    assert c["strings"][0] == [enc["strings"][0][0], enc["strings"][1][0]]  # byte for byte
    assert torch.equal(d, dec)  # CompressAI's decoded image, bit for bit
    assert torch.equal(out.x_hat.clamp(0, 1), d)  # the eval forward is the decoder
    assert (out.y_hat - out.params.means).abs().max() >= 1  # non-trivial symbols


def _reference(codec, x, mode_q):
    """y_hat and prior of the eval walk through `Backbone.serial` (position by position)."""
    bb = codec.backbone
    y = bb.g_a(x)
    z_hat = bb.entropy_bottleneck(bb.h_a(y))[0]
    hyper = bb.h_s(z_hat)
    channel = Hard(mode_q)
    ref = bb.serial(hyper, lambda p, i: channel.step(y[i], p), y.shape)
    fast = context.code_context(bb, hyper, y, channel, y.shape)
    return ref, fast


@pytest.mark.parametrize("quantizer", ["noise", "hex", "oct"])
@pytest.mark.parametrize("name", ["mbt", "cheng_anchor"])
def test_wavefront_equals_position_by_position(name, quantizer):
    """The wavefront encoder computes bit for bit what the raster-order reference does."""
    codec = _codec(name, levels=256)
    q = NoiseQuantizer() if quantizer == "noise" else LatticeQuantizer(quantizer)
    x = torch.rand(1, 3, 128, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (y_ref, p_ref), (y_fast, p_fast) = _reference(codec, x, q)
    assert torch.equal(y_fast, y_ref)
    assert torch.equal(p_fast.means, p_ref.means) and torch.equal(p_fast.scales, p_ref.scales)


@pytest.mark.parametrize("quantizer", ["noise", "hex"])
def test_round_trip_with_scale_levels_and_quantizers(quantizer):
    """Lattice symbols go through the same wavefront (coded position by position); decoding
    reproduces the eval reconstruction."""
    codec = _codec("mbt", levels=256)
    if quantizer != "noise":
        codec.quantizer = LatticeQuantizer(quantizer)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = codec(x)
        c = codec.compress(x)
        d = codec.decompress(c["strings"], c["shape"], c["y_shape"], c["z_shape"])
    assert torch.equal(d, out.x_hat.clamp(0, 1))


@pytest.mark.parametrize("how", ["in_place", "data"])
def test_kernels_follow_weight_changes(how):
    """Changing a context weight in place (an optimizer step) or through `.data` (no version
    bump: an EMA copy) rebuilds the prepared kernels."""
    codec = _codec("mbt")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        first = codec(x).params.means
        bias = codec.backbone.entropy_parameters[-1].bias
        (bias if how == "in_place" else bias.data).add_(0.5)
        (y_ref, p_ref), (y_fast, p_fast) = _reference(codec, x, NoiseQuantizer())
        second = codec(x).params.means
    assert not torch.equal(first, second)
    assert torch.equal(p_fast.means, p_ref.means) and torch.equal(second, p_ref.means)


@pytest.mark.parametrize("case", ["tanh", "no_onednn", "float64"])
def test_other_context_models_fall_back_to_serial(case, monkeypatch):
    """What the fast path does not reproduce bit for bit (a Tanh among the 1x1 layers; oneDNN
    disabled; float64) is coded position by position by `Backbone.serial`, and round-trips."""
    codec = _codec("mbt")
    if case == "tanh":
        codec.backbone.entropy_parameters[1] = torch.nn.Tanh()
        assert context.context_kernels(codec.backbone) is None
    calls = []
    serial = type(codec.backbone).serial
    monkeypatch.setattr(type(codec.backbone), "serial", lambda self, *a: calls.append(1) or serial(self, *a))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    if case == "float64":
        codec, x = codec.double(), x.double()
        codec.update(force=True)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=case != "no_onednn"):
        out = codec(x)
        c = codec.compress(x)
        d = codec.decompress(c["strings"], c["shape"], c["y_shape"], c["z_shape"])
    assert torch.equal(d, out.x_hat.clamp(0, 1)) and len(calls) == 3


def _gc(levels: int) -> GaussianConditional:
    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(levels=levels))
    gc.update()
    return gc


@pytest.mark.parametrize("levels", [64, 256])
def test_indexes_equal_compressai_build_indexes(levels):
    gc = _gc(levels)
    t = gc.scale_table
    scales = torch.cat([torch.rand(3000) * 300, t, t - 1e-6, t + 1e-6, torch.tensor([0.0, -1.0, 0.05, 1e9])])
    scales = scales.view(1, -1, 1, 1)
    idx = NoiseQuantizer(scale_keys="up")._indexes(EntropyParams(torch.zeros_like(scales), scales, gc))
    ref = gc.build_indexes(scales)
    assert idx.dtype == ref.dtype and torch.equal(idx, ref)


def test_rans_decoder_equals_compressai_in_any_call_pattern():
    """The compiled decoder reads what CompressAI's coder wrote (with bypass-coded values far
    outside the tables), in pieces of any size, like CompressAI's RansDecoder."""
    gc = _gc(64)
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(5000, generator=g) * 20 + 0.05
    symbols = torch.round(torch.randn(5000, generator=g) * scales * 1.5)
    symbols[::97] = torch.randint(-100000, 100000, (len(symbols[::97]),), generator=g).float()
    symbols[5], symbols[6] = 2.0**26, -(2.0**26)
    idx = gc.build_indexes(scales)
    enc = RansStreamEncoder(gc)
    for i in range(0, 5000, 192):  # buffered: one CompressAI call at finish
        enc.encode(symbols[i: i + 192], idx[i: i + 192])
    data = enc.finish()
    t = _Tables(gc)
    ref = RansDecoder()
    ref.set_stream(data)
    expected = torch.tensor(ref.decode_stream(idx.tolist(), t.cdf, t.cdf_length, t.offset), dtype=torch.int32)
    dec = RansStreamDecoder(gc, data)
    got = torch.cat([dec.decode(idx[a:b]) for a, b in ((0, 1), (1, 700), (700, 701), (701, 5000))])
    assert torch.equal(got, expected) and torch.equal(got.float(), symbols)


def test_rans_decoder_survives_damaged_streams():
    """Truncated or flipped streams decode to some integers (reads past the end read zeros),
    never out of bounds; a table index out of range is a clean error."""
    gc = _gc(64)
    idx = gc.build_indexes(torch.full((400,), 3.0))
    enc = RansStreamEncoder(gc)
    enc.encode(torch.round(torch.randn(400, generator=torch.Generator().manual_seed(1)) * 3), idx)
    data = enc.finish()
    for damaged in (data[:5], data[: len(data) // 2], bytes(b ^ 0xFF for b in data), b""):
        out = RansStreamDecoder(gc, damaged).decode(idx)
        assert out.shape == idx.shape and out.dtype == torch.int32
    with pytest.raises(ValueError, match="out of range"):
        RansStreamDecoder(gc, data).decode(torch.tensor([64], dtype=torch.int32))


@pytest.mark.parametrize("rule", ["up", "nearest"])
def test_position_decoder_equals_the_quantizers_decode(rule, monkeypatch):
    """The serial decoder's lean inner step (`ScalarQuantizer.position_decoder`: lower bound,
    table search, compiled rANS, sum with the means) decodes what `decode` decodes, for both
    scale-key rules."""
    from codecx.quantizers.scalar import ScalarQuantizer

    codec = _codec("mbt")
    codec.quantizer = NoiseQuantizer(scale_keys=rule)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c = codec.compress(x, estimate=False)
        args = (c["strings"], c["shape"], c["y_shape"], c["z_shape"])
        used = []
        real = ScalarQuantizer.position_decoder
        monkeypatch.setattr(ScalarQuantizer, "position_decoder", lambda *a: used.append(real(*a)) or used[-1])
        fast = codec.decompress(*args)
        monkeypatch.setattr(ScalarQuantizer, "position_decoder", lambda *a: None)
        plain = codec.decompress(*args)
    assert used and used[0] is not None  # the lean step ran
    assert torch.equal(fast, plain) and torch.equal(fast, codec(x).x_hat.clamp(0, 1))
