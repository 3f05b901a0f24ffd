"""Latent shift (arXiv 2501.01231 sec. 4): gradients, encoder choice, exact round trips, diagnostics."""
from __future__ import annotations

import pytest
import torch
from compressai.entropy_models import GaussianConditional

from codecx.conf import CONF_DIR
from codecx.coding.container import BitstreamError, Header, decode_image, encode_image, pack, unpack
from codecx.inference.latent_shift import (
    LatentShift, gaussian_bin_nll_grad, rate_gradient, shift_gradient_correlation,
)
from codecx.quantizers import LatticeQuantizer, NoiseQuantizer
from codecx.types import EntropyParams
from conftest import tiny_codec

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _codec(backbone="mbt_mean", quantizer="noise", shift=None, seed=0):
    torch.manual_seed(seed)
    codec = tiny_codec(backbone, quantizer if quantizer in ("noise", "ste", "mixed") else "noise")
    if quantizer not in ("noise", "ste", "mixed"):
        codec.quantizer = LatticeQuantizer(quantizer)
    with torch.no_grad():
        codec.backbone.g_a[-1].weight.mul_(5)  # latents of a few units
    if shift is not None:
        codec.add_transforms(shift)  # an eval-time latent transform, after the codec's own (none)
    codec.eval().update(force=True)
    return codec


def _unshifted(codec):
    """The same codec without its latent shift (its only transform)."""
    codec.transforms = torch.nn.ModuleList([t for t in codec.transforms if not isinstance(t, LatentShift)])
    return codec


def _image(size=64, seed=0):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_closed_form_gradient_equals_autograd(dtype):
    gc = GaussianConditional(None)
    g = torch.Generator().manual_seed(0)
    n = 20000
    means = (torch.randn(n, generator=g) * 3).to(dtype)
    scales = torch.exp(torch.empty(n).uniform_(-4, 3, generator=g)).to(dtype)  # below the 0.11 bound too
    t = torch.round(torch.randn(n, generator=g) * 4).to(dtype)
    t[:50] = 0  # exactly at the mean: zero gradient
    t[50:100] = 40  # far in the tail: the 1e-9 likelihood bound is active
    y_hat = means + t
    params = EntropyParams(means, scales, gc)
    closed = rate_gradient(NoiseQuantizer(), y_hat, params)
    v = y_hat.clone().requires_grad_(True)
    nll = -params.likelihood(v).log().sum()
    auto = torch.autograd.grad(nll, v)[0]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    assert torch.allclose(closed, auto, **tol)
    assert torch.all(closed[:50] == 0) and torch.all(closed[50:100] >= 0)  # the tail's density underflows
    assert torch.allclose(closed, gaussian_bin_nll_grad(y_hat, means, gc.lower_bound_scale(scales),
                                                  float(gc.likelihood_lower_bound.bound)), **tol)
    # points away from the mean push outwards: the gradient has the sign of y_hat - means
    nz = closed != 0
    assert torch.all(torch.sign(closed[nz]) == torch.sign(t[nz])) and nz[100:].float().mean() > 0.5


@pytest.mark.parametrize("name", ["hex", "oct"])
def test_lattice_gradient_matches_finite_differences(name):
    gc = GaussianConditional(None)
    q = LatticeQuantizer(name, "channel").eval()
    g = torch.Generator().manual_seed(1)
    means = torch.randn(1, 6, 2, 2, generator=g, dtype=F64)
    scales = torch.exp(torch.empty(1, 6, 2, 2, dtype=F64).uniform_(-1, 1, generator=g))
    params = EntropyParams(means, scales, gc)
    y_hat = q.hard(means + scales * torch.randn(1, 6, 2, 2, generator=g, dtype=F64), params)
    grad = rate_gradient(q, y_hat, params)
    nll = lambda v: -q.likelihood(v, params).log().sum()  # noqa: E731
    eps = 1e-5
    for idx in [(0, 0, 0, 0), (0, 3, 1, 0), (0, 5, 1, 1)]:
        d = torch.zeros_like(y_hat)
        d[idx] = eps
        fd = (nll(y_hat + d) - nll(y_hat - d)) / (2 * eps)
        assert fd.item() == pytest.approx(grad[idx].item(), rel=1e-3, abs=1e-6)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("backbone, quantizer", [
    ("mbt_mean", "noise"), ("mbt_mean", "hex"), ("mbt", "noise"), ("mbt", "hex"),
    ("mbt_mean", "ste"), ("mbt_mean", "mixed"), ("mbt_mean", "oct"), ("mbt_mean", "d4"), ("mbt", "oct")])
def test_round_trip_exact_with_shift(backbone, quantizer):
    codec = _codec(backbone, quantizer, LatentShift("latent", [0.0, 0.01, 0.05, -0.05]))
    x = _image()
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], options=enc["options"])
        data = encode_image(codec, x, bytes(8), {"quantizer": quantizer})
        x_file, header = decode_image(codec, data)
    k = int(out.metrics["shift_index"])
    assert enc["options"] == [{"shift_index": k}]
    assert header.options == {"quantizer": quantizer, "shift_index": k}
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1)) and torch.equal(x_file, x_dec)
    # the decoder really shifts: without the shift its output would differ (unless k is 0)
    _unshifted(codec)
    with torch.no_grad():
        plain = codec(x).x_hat.clamp(0, 1)
    assert torch.equal(plain, x_dec) == (k == 0)


@pytest.mark.parametrize("mode, quantizer", [("sign", "noise"), ("scalar", "noise"), ("sign", "oct"),
                                             ("scalar", "hex")])
def test_baseline_modes_round_trip(mode, quantizer):
    codec = _codec("mbt_mean", quantizer, LatentShift(mode, [0.0, 0.02, -0.02, 0.1]))
    x = _image(seed=1)
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], options=enc["options"])
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    sh = codec.transforms[-1]
    d = sh.direction(codec.quantizer, out.y_hat, out.params)
    if mode == "scalar":
        assert torch.equal(d, torch.ones_like(d))
    else:
        assert set(d.unique().tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("quantizer", ["noise", "hex"])
def test_side_shift_round_trip(quantizer):
    shift = LatentShift("latent", [0.0, 0.02], side_candidates=[0.0, 0.5, -0.5, 2.0])
    codec = _codec("mbt_mean", quantizer, shift)
    x = _image(seed=2)
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], options=enc["options"])
    assert set(enc["options"][0]) == {"shift_index", "side_shift_index"}
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    # the chosen side step has the fewest estimated y bits among the candidates (eq. 5)
    bb = codec.backbone
    from codecx.inference.latent_shift import side_rate_gradient

    g = side_rate_gradient(bb, out.z_hat)
    bits = []
    with torch.no_grad():
        for c in shift.side_candidates:
            p = bb.params(bb.side_from_z_hat(out.z_hat + c * g), like=out.y)
            bits.append(-codec.quantizer.likelihood(codec.quantizer.hard(out.y, p), p).log2().sum().item())
    assert enc["options"][0]["side_shift_index"] == min(range(len(bits)), key=bits.__getitem__)
    assert -out.likelihoods["y"].log2().sum().item() == pytest.approx(min(bits), rel=1e-4)
    context = _codec("mbt", "noise", shift)
    with pytest.raises(ValueError, match="side-latent shift needs a hyperprior"):
        context.compress(x)


# ---------------------------------------------------------------------------- the encoder's choice
def test_only_zero_candidate_is_no_shift():
    codec = _codec("mbt_mean", "noise", LatentShift("latent", [0.0]))
    x = _image(seed=3)
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        _unshifted(codec)
        plain = codec(x)
    assert enc["options"] == [{"shift_index": 0}] and int(out.metrics["shift_index"]) == 0
    assert torch.equal(out.x_hat, plain.x_hat)


@pytest.mark.parametrize("quantizer", ["noise", "hex"])
@pytest.mark.parametrize("seed", [0, 1])
def test_chosen_distortion_not_worse_than_no_shift(quantizer, seed):
    cands = [0.0, 0.01, 0.03, 0.1, -0.01, -0.03, -0.1]
    codec = _codec("mbt_mean", quantizer, LatentShift("latent", cands), seed=seed)
    x = _image(seed=seed)
    with torch.no_grad():
        shifted = codec(x)
        _unshifted(codec)
        plain = codec(x)
    mse = lambda o: (o.x_hat.clamp(0, 1) - x).square().mean().item()  # noqa: E731
    assert mse(shifted) <= mse(plain) * (1 + 1e-6)
    # the rate is that of the coded (unshifted) symbols
    assert torch.equal(shifted.likelihoods["y"], plain.likelihoods["y"])


def test_tile_selection_matches_full_image_pixels():
    shift = LatentShift("latent", [0.0, 0.02, -0.02], fraction=0.15, tile=4)
    codec = _codec("mbt_mean", "noise", shift)
    x = _image(256, seed=4)  # a 16x16 latent: 3 interior 4x4 tiles (8x8 with margins)
    with torch.no_grad():
        out = codec(x)
        tiles = shift._tiles(out.y_hat.shape[-2:], x.shape[-2:], 16)
        assert tiles is not None and len(tiles.corners) >= 2
        full = codec.backbone.g_s(out.y_hat)
        part = codec.backbone.g_s(tiles(out.y_hat))[..., tiles.crop, tiles.crop]
        assert torch.allclose(part, tiles.target(full), atol=1e-5)  # the margin covers g_s's reach
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], options=enc["options"])
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    # too small for a tile: falls back to the whole image
    assert shift._tiles((4, 4), (64, 64), 16) is None


# ---------------------------------------------------------------------------- errors and diagnostics
def test_errors():
    with pytest.raises(ValueError, match="must contain 0"):
        LatentShift("latent", [0.1, 0.2])
    with pytest.raises(ValueError, match="mode"):
        LatentShift("random")
    with pytest.raises(ValueError, match="fraction"):
        LatentShift(fraction=0)
    codec = _codec("mbt_mean", "noise", LatentShift("latent", [0.0, 0.01]))
    x = _image()
    with torch.no_grad():
        enc = codec.compress(x)
        with pytest.raises(ValueError, match="shift_index"):
            codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
        with pytest.raises(ValueError, match="0..1"):
            codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], options={"shift_index": 7})
    header, streams = unpack(encode_image(codec, x, bytes(8)))
    header.options["shift_index"] = 9
    with pytest.raises(BitstreamError, match="shift_index"):
        decode_image(codec, pack(header, streams))
    assert isinstance(header, Header)


@pytest.mark.parametrize("quantizer", ["noise", "hex"])
def test_gradient_correlation_diagnostic(quantizer):
    codec = _codec("mbt_mean", quantizer, LatentShift("latent", [0.0, 0.01]))
    x = _image(seed=5)
    r = shift_gradient_correlation(codec, x)
    assert -1 <= r <= 1 and r == r
    assert isinstance(codec.transforms[-1], LatentShift) and not codec.training  # state restored
    with pytest.raises(ValueError, match="one image"):
        shift_gradient_correlation(codec, torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["latent", "latent_fast", "latent_side", "sign", "scalar"])
def test_every_shift_config_codes_exactly(name):
    """Each preset of the latent_shift transform (conf/shift) instantiates and round-trips a real
    file exactly (eval.py shift=NAME); shift=latent is transform=[latent_shift]."""
    from hydra.utils import instantiate

    from codecx.config import group_option

    node = group_option("shift", name, CONF_DIR)
    assert list(node) == ["latent_shift"]
    assert (node == group_option("transform", "latent_shift", CONF_DIR)) == (name == "latent")
    shift = instantiate(node["latent_shift"])
    assert isinstance(shift, LatentShift) and not shift.in_training
    codec = _codec("mbt_mean", "noise", shift)
    x = _image(size=128, seed=3)
    with torch.no_grad():
        ref = codec(x).x_hat.clamp(0, 1)
        x_file, header = decode_image(codec, encode_image(codec, x, bytes(8)))
    assert torch.equal(x_file, ref) and 0 <= header.options["shift_index"] < len(shift.candidates)
    assert ("side_shift_index" in header.options) == (name == "latent_side")
