"""SGA (Yang, Bamler, Mandt 2020): the relaxation's limits, the tau schedules, lower R + lmbda D
on a tiny model for every prior family, the never-worse rule, and exact real coding."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from codecx.inference.sga import SCHEDULES, SGA, sga_round
from conftest import tiny_codec

CONF = Path(__file__).resolve().parent.parent / "codecx" / "conf" / "refine"
LMBDA = 0.01


def _image(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 3, size, size, generator=g), 5, 1, 2)


def _trained_ish(name="mbt_mean", steps=8):
    """A tiny codec after a few Adam steps on the test image (not a random decoder)."""
    from codecx.losses import rate_distortion

    torch.manual_seed(0)
    codec = tiny_codec(name, N=8, M=12)
    x = _image()
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    codec.train()
    for _ in range(steps):
        loss = rate_distortion(x, codec(x), LMBDA)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    codec.eval()
    codec.update(force=True)
    return codec


@pytest.fixture(scope="module")
def codec():
    return _trained_ish()


def _latents(codec, x):
    bb = codec.backbone
    with torch.no_grad():
        y = bb.g_a(x)
        h_a_input = getattr(bb, "h_a_input", None) or bb._h_a_input
        z = bb.h_a(h_a_input(y)) if bb.family != "factorized" else None
    return y, z


def test_tau_schedules():
    s, o = SCHEDULES["shallow_ntc"], SCHEDULES["original"]
    assert s(0) == s(200) == 0.5 and s(1200) == pytest.approx(0.5 * math.exp(-0.5))
    assert s(3000) == pytest.approx(0.5 * math.exp(-5e-4 * 2800))
    assert o(0) == o(700) == 0.5  # clipped to 0.5 before the offset
    assert o(1700) == pytest.approx(0.5 * math.exp(-1.0)) and o(10 ** 6) == 1e-8
    fast = SGA(steps=400, tau_rate=1e-2, tau_offset=50).tau
    assert fast(50) == 0.5 and fast(400) == pytest.approx(0.5 * math.exp(-3.5))


def test_relaxation_limits():
    """tau -> 0: rounding; tau large: the bin's midpoint; in between a differentiable sample
    that always lies between floor and ceil."""
    torch.manual_seed(0)
    v = torch.randn(2000) * 3
    v = v[(v - v.floor() - 0.5).abs() > 0.05]  # away from the rounding ties
    assert torch.equal(sga_round(v, 1e-3), torch.round(v))
    assert torch.allclose(sga_round(v, 1e4), v.floor() + 0.5, atol=1e-3)
    v.requires_grad_(True)
    s = sga_round(v, 0.5, torch.Generator().manual_seed(1))
    assert ((s >= v.floor() - 1e-6) & (s <= v.ceil() + 1e-6)).all()
    s.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    # the same seed draws the same sample
    a = sga_round(v.detach(), 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, sga_round(v.detach(), 0.5, torch.Generator().manual_seed(3)))
    # at tau = 1 the expectation moves towards the nearer grid point
    w = torch.full((20000,), 2.2)
    assert 2.0 < sga_round(w, 1.0, torch.Generator().manual_seed(0)).mean() < 2.5


def test_sga_lowers_the_loss(codec):
    """12 steps lower the relaxed loss and the hard-rounded bpp + lmbda D of the image."""
    x = _image()
    y, z = _latents(codec, x)
    sga = SGA(steps=12, lr=3e-2, keep_best=False)
    y2, z2 = sga(x, codec, y, z, LMBDA)
    assert y2.shape == y.shape and z2.shape == z.shape and not torch.equal(y2, y)
    curve = sga.last["curve"]
    assert curve[-1] < curve[0]
    assert sga.hard_loss(codec, x, y2, z2, LMBDA)[0] < sga.hard_loss(codec, x, y, z, LMBDA)[0]


@pytest.mark.parametrize("name", ["bmshj_factorized", "bmshj_hyperprior", "mbt"])
def test_every_prior_family(name):
    """Factorized (no z), scale hyperprior and the context model: SGA lowers the relaxed loss
    (random decoders: the latents are too small to change their rounding in a few steps)."""
    torch.manual_seed(0)
    codec = tiny_codec(name, N=8, M=12).eval()
    codec.update(force=True)
    x = _image(64, seed=1)
    y, z = _latents(codec, x)
    sga = SGA(steps=4, lr=5e-2, keep_best=False)
    y2, z2 = sga(x, codec, y, z, LMBDA)
    assert (z2 is None) == (name == "bmshj_factorized") and y2.shape == y.shape
    assert sga.last["curve"][-1] < sga.last["curve"][0] and not torch.equal(y2, y)
    assert math.isfinite(sga.hard_loss(codec, x, y2, z2, LMBDA)[0])


def test_never_worse(codec):
    """With keep_best, latents that round worse than the originals are not used."""
    x = _image()
    y, z = _latents(codec, x)
    sga = SGA(steps=3, lr=50.0, keep_best=True)  # steps far too large: a worse point
    y2, z2 = sga(x, codec, y, z, LMBDA)
    assert sga.last["kept"] == "original" and sga.last["hard_after"][0] > sga.last["hard_before"][0]
    assert torch.equal(y2, y) and torch.equal(z2, z)


def test_config_nodes_and_errors(codec):
    for name, steps, schedule in (("sga", 3000, "shallow_ntc"), ("sga_original", 2000, "original")):
        node = OmegaConf.load(CONF / f"{name}.yaml")[name]
        s = instantiate(node)
        assert isinstance(s, SGA) and s.steps == steps and s.schedule_name == schedule
    with pytest.raises(ValueError, match="refine.sga.schedule='fast'"):
        SGA(schedule="fast")
    x = _image()
    y, z = _latents(codec, x)
    with pytest.raises(ValueError, match="refine.sga.lmbda"):
        SGA(steps=1)(x, codec, y, z, None)
    from codecx.models import Codec
    from codecx.quantizers import LatticeQuantizer

    lattice = Codec(codec.backbone, LatticeQuantizer(lattice="hex"))
    with pytest.raises(ValueError, match="SGA relaxes scalar rounding"):
        SGA(steps=1)(x, lattice, y, z, LMBDA)


def _real_loss(codec, x):
    """(bpp of the real streams + lmbda 255^2 MSE of the decoded image, streams, x_hat)."""
    enc = codec.compress(x)
    x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"],
                             enc.get("options"))
    bits = 8 * sum(len(s) for s in enc["strings"][0])
    mse = torch.mean((x_dec - x) ** 2).item() * 255 ** 2
    return bits / (x.shape[-2] * x.shape[-1]) + LMBDA * mse, enc, x_dec


def test_codec_with_sga_codes_exactly_and_never_worse(codec):
    """Codec(..., refiners=[SGA]): eval forward == decompress(compress(x)) bit-exactly (the
    seeded refiner picks the same latents twice), and the real bpp + lmbda D is not worse."""
    from codecx.models import Codec

    if "refiners" not in inspect.signature(Codec).parameters:
        pytest.skip("this Codec has no refiners hook yet")
    x = _image()
    plain = Codec(codec.backbone, codec.quantizer, lmbda=LMBDA).eval()
    refined = Codec(codec.backbone, codec.quantizer, refiners=[SGA(steps=8, lr=3e-2)], lmbda=LMBDA).eval()
    with torch.no_grad():
        out = refined(x)
        loss_sga, enc, x_dec = _real_loss(refined, x)
        loss_plain, enc0, _ = _real_loss(plain, x)
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    assert enc["strings"][0] != enc0["strings"][0]  # other latents were coded
    assert loss_sga <= loss_plain


def test_cache_returns_the_same_result_until_the_weights_change(codec):
    """eval's rate estimate after compress calls the refiner again on the same image: the
    cached result comes back (no second optimisation) unless the inputs or weights changed."""
    x = _image()
    y, z = _latents(codec, x)
    sga = SGA(steps=3, lr=2e-2, keep_best=False)
    y1, z1 = sga(x, codec, y, z, LMBDA)
    first = sga.last
    y2, z2 = sga(x, codec, y.clone(), z.clone(), LMBDA)
    assert y2 is y1 and z2 is z1 and sga.last is first
    sga(x, codec, y, z, 2 * LMBDA)  # another lmbda: optimised again
    assert sga.last is not first
    again = sga.last
    w = codec.backbone.g_s[0].weight
    with torch.no_grad():
        w.add_(0.0)  # an optimizer step changes the weights in place
    y3, _ = sga(x, codec, y, z, 2 * LMBDA)
    assert sga.last is not again
    uncached = SGA(steps=3, lr=2e-2, keep_best=False, cache=False)
    ya, _ = uncached(x, codec, y, z, LMBDA)
    assert torch.equal(ya, y1)  # seeded: the same latents as the cached first call


def test_loss_curves_side_file(codec, tmp_path):
    """`curves=PATH` appends each image's relaxed-loss curve (image, step, tau, loss)."""
    import csv

    x = _image()
    y, z = _latents(codec, x)
    path = tmp_path / "sga_curves.csv"
    sga = SGA(steps=4, lr=2e-2, curves=str(path), cache=False)
    sga(x, codec, y, z, LMBDA)
    sga(x, codec, y, z, LMBDA)
    rows = list(csv.DictReader(open(path)))
    assert [(r["image"], r["step"]) for r in rows] == [(str(i), str(t)) for i in range(2) for t in range(4)]
    assert float(rows[0]["tau"]) == 0.5
    assert [float(r["loss"]) for r in rows[4:]] == pytest.approx(sga.last["curve"], rel=1e-5)
