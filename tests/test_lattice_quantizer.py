"""LatticeQuantizer (Hex-/Oct-Quant, D4): grouping, relaxation, real bitstreams with escapes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models.google import get_scale_table

from codecx.conf import CONF_DIR
from codecx.coding.lattice_coder import LatticeTables
from codecx.losses import bits_per_pixel
from codecx.quantizers import LatticeQuantizer
from codecx.types import EntropyParams
from conftest import tiny_codec

LATTICES = ["hex", "oct", "d4"]
ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _gc() -> GaussianConditional:
    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    gc.update()
    return gc


def _gaussian_latents(lo, hi, C=12, H=8, W=8, seed=0):
    """(y, params) with y ~ N(means, scales), scales log-uniform in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(1, C, H, W).uniform_(math.log(lo), math.log(hi), generator=g))
    means = torch.randn(1, C, H, W, generator=g) * 3
    y = means + scales * torch.randn(1, C, H, W, generator=g)
    return y, EntropyParams(means, scales, _gc())


def _code(q, y, params, fresh_tables=True):
    """Encode, then decode (by default with an empty table cache, as another process would)."""
    enc = q.open_encoder(params.entropy_model)
    y_hat = q.encode(enc, y, params)
    data = enc.finish()
    if fresh_tables:
        LatticeTables._cache.clear()
        LatticeTables._cached_symbols = 0
    y_dec = q.decode(q.open_decoder(params.entropy_model, data), params)
    return y_hat, y_dec, data


# ---------------------------------------------------------------------------- grouping
@pytest.mark.parametrize("name", LATTICES)
@pytest.mark.parametrize("grouping", ["scale", "channel"])
@pytest.mark.parametrize("C", [12, 13])
def test_inverse_grouping_restores_order(name, grouping, C):
    q = LatticeQuantizer(name, grouping)
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 5, 3, C, generator=g)
    scales = torch.rand(2, 5, 3, C, generator=g)
    scales[..., :4] = 0.11  # ties keep channel order (stable sort)
    perm = q.permutation(scales)
    groups, rest = q.group(t, perm)
    assert groups.shape == (2, 5, 3, C // q.dim, q.dim) and rest.shape == (2, 5, 3, C % q.dim)
    assert torch.equal(q.ungroup(groups, rest, perm), t)
    sg, sr = q.group(scales, perm)
    flat = torch.cat([sg.flatten(-2), sr], -1)
    if grouping == "scale":  # neighbours in descending scale order; the remainder has the smallest
        assert torch.all(flat[..., :-1] >= flat[..., 1:])
        assert torch.equal(flat, scales.sort(dim=-1, descending=True, stable=True).values)
    else:
        assert torch.equal(flat, scales)


def test_bad_options_and_factorized_prior():
    with pytest.raises(ValueError, match="grouping"):
        LatticeQuantizer("hex", grouping="random")
    with pytest.raises(KeyError, match="unknown lattice"):
        LatticeQuantizer("e8")
    codec = tiny_codec("bmshj_factorized")
    codec.quantizer = LatticeQuantizer("hex")
    with pytest.raises(ValueError, match="Gaussian .*prior.*bmshj_factorized|factorized"):
        codec.train()(torch.rand(1, 3, 64, 64))
    codec.eval().update(force=True)
    with pytest.raises(ValueError, match="Gaussian"):
        codec.compress(torch.rand(1, 3, 64, 64))


# ---------------------------------------------------------------------------- training / eval
@pytest.mark.parametrize("name", LATTICES)
def test_training_forward_rate_and_gradients(name):
    torch.manual_seed(0)
    q = LatticeQuantizer(name).train()
    y, params = _gaussian_latents(0.1, 5, C=13)
    y.requires_grad_(True)
    means = params.means.clone().requires_grad_(True)
    scales = params.scales.clone().requires_grad_(True)
    out = q(y, EntropyParams(means, scales, params.entropy_model))
    assert out.likelihoods.shape == y.shape and out.y_hat.shape == y.shape
    # the relaxation: noise uniform over the Voronoi cell, |noise| <= covering radius
    groups, _ = q.group((out.y_hat - y).detach().movedim(1, -1), q.permutation(scales.detach().movedim(1, -1)))
    assert groups.norm(dim=-1).max() <= q.lattice.covering_radius + 1e-5
    rate = bits_per_pixel({"y": out.likelihoods}, 64)
    loss = rate + out.y_hat.square().mean()
    loss.backward()
    assert torch.isfinite(rate) and rate > 0
    for t in (y, means, scales):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LATTICES)
def test_eval_is_nearest_point_and_rate_is_cell_probability(name):
    from codecx.lattice_math import cell_prob

    q = LatticeQuantizer(name, "channel").eval()
    y, params = _gaussian_latents(0.2, 3, C=12)
    out = q(y, params)
    assert torch.equal(out.y_hat, q.hard(y, params))
    u, _ = q.group((y - params.means).movedim(1, -1), None)
    pts, _ = q.group((out.y_hat - params.means).movedim(1, -1), None)
    assert torch.allclose(pts, q.lattice.nearest(u), atol=1e-5)
    s, _ = q.group(params.scales.movedim(1, -1), None)
    p = cell_prob(q.lattice, q.lattice.nearest(u).double(), torch.zeros((), dtype=torch.float64), s.double(),
                  bound=None)
    assert torch.allclose(-out.likelihoods.double().log().sum(), -p.log().sum(), rtol=1e-4)
    # the likelihood of an already quantized y_hat (serial context models) is the same
    assert torch.allclose(q.likelihood(out.y_hat, params), out.likelihoods, rtol=1e-4)


# ---------------------------------------------------------------------------- real coding
@pytest.mark.parametrize("name", LATTICES)
@pytest.mark.parametrize("lo,hi", [(0.05, 0.5), (0.3, 3.0), (2.0, 40.0)])
def test_real_bits_match_estimate(name, lo, hi):
    """Joint tables (small scales) and the box model (large scales) both code near -log2 p."""
    q = LatticeQuantizer(name).eval()
    y, params = _gaussian_latents(lo, hi, C=12, H=12, W=12, seed=3)
    est = -q(y, params).likelihoods.double().log2().sum().item()
    y_hat, y_dec, data = _code(q, y, params, fresh_tables=False)
    assert torch.equal(y_dec, y_hat)
    assert est * 0.97 - 64 <= len(data) * 8 <= est * 1.03 + 64, (est, len(data) * 8)


@pytest.mark.parametrize("name", LATTICES)
def test_escapes_code_points_outside_the_support(name):
    q = LatticeQuantizer(name, "channel").eval()
    y, params = _gaussian_latents(0.11, 0.3, C=13, H=3, W=3)
    y = y.clone()
    y[0, : q.dim, 0, 0] += 1000.0  # joint table, far outside: escape symbol + coordinates
    y[0, 12, 1, 1] -= 300.0  # the scalar remainder (13 mod v != 0)
    big = params.scales.clone()
    big[0, : q.dim, 2, 2] = 30.0  # box model ...
    y[0, : q.dim, 2, 2] += 5e4  # ... with coordinates beyond its symbol range
    params = EntropyParams(params.means, big, params.entropy_model)
    y_hat, y_dec, _ = _code(q, y, params)
    assert torch.equal(y_dec, y_hat) and torch.equal(y_hat, q.hard(y, params))
    assert (y_hat[0, : q.dim, 0, 0] - y[0, : q.dim, 0, 0]).norm() <= q.lattice.covering_radius + 1e-3
    assert (y_hat - y).abs().max() < 2


@pytest.mark.parametrize("name", LATTICES)
@pytest.mark.parametrize("backbone", ["mbt_mean", "mbt"])
@pytest.mark.parametrize("grouping", ["scale", "channel"])
def test_codec_round_trip_equals_eval_reconstruction(name, backbone, grouping):
    torch.manual_seed(0)
    codec = tiny_codec(backbone)
    codec.quantizer = LatticeQuantizer(name, grouping)
    with torch.no_grad():
        codec.backbone.g_a[-1].weight.mul_(8)  # latents of a few units: many non-zero symbols
    codec.eval().update(force=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        LatticeTables._cache.clear()
        LatticeTables._cached_symbols = 0
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    assert (out.y_hat - out.params.means).abs().max() > 1  # not all zeros
    assert out.likelihoods["y"].shape == out.y.shape


@pytest.mark.parametrize("backbone", ["mbt_mean", "mbt"])
def test_coding_skips_the_rate_estimate(backbone, monkeypatch):
    """`compress(x, estimate=False)` (what `codecx compress` and SGA's real-bytes check use)
    writes the same streams without the lattice cell integrals of the rate estimate."""
    from codecx.coding.container import encode_image, unpack

    torch.manual_seed(0)
    codec = tiny_codec(backbone)
    codec.quantizer = LatticeQuantizer("oct")
    codec.eval().update(force=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = codec.compress(x)
        assert full["likelihoods"][0]["y"] is not None
        monkeypatch.setattr(LatticeQuantizer, "likelihood", lambda *a, **k: pytest.fail("rate estimate computed"))
        fast = codec.compress(x, estimate=False)
        data = encode_image(codec, x, bytes(8))
    assert fast["strings"] == full["strings"] and fast["likelihoods"] == [None]
    assert unpack(data)[1] == full["strings"][0]


def test_real_bits_close_to_estimate_on_kodak(kodak_image):
    """A random mbt_mean on a real photo: the y stream is within a few percent of -log2 p."""
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean", N=16, M=16)
    codec.quantizer = LatticeQuantizer("hex")
    codec.eval().update(force=True)
    x = kodak_image[..., :128, :192]
    with torch.no_grad():
        est = -codec(x).likelihoods["y"].double().log2().sum().item()
        real = len(codec.compress(x)["strings"][0][0]) * 8
    assert est * 0.95 - 64 <= real <= est * 1.05 + 64, (est, real)


def test_configs_and_scalar_checkpoints_load():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for name in LATTICES:
        q = instantiate(OmegaConf.load(Path(CONF_DIR) / "quantizer" / f"{name}.yaml"))
        assert isinstance(q, LatticeQuantizer) and q.lattice.name == name and q.grouping == "scale"
        assert len(q.state_dict()) == 0 and len(list(q.parameters())) == 0
    scalar = tiny_codec("mbt_mean")
    lattice = tiny_codec("mbt_mean")
    lattice.quantizer = LatticeQuantizer("oct")
    lattice.load_state_dict(scalar.state_dict())  # nothing to add or drop


def test_fine_tune_a_scalar_checkpoint_with_the_lattice_relaxation(tiny_ckpt, tmp_path):
    """`train.py quantizer=hex model.weights=<scalar last.ckpt>` starts from the checkpoint's
    backbone and trains with Voronoi noise; the result codes with hex at eval."""
    import torch

    from codecx.eval.load import load_codec
    from conftest import TINY, run_train

    r = run_train([*TINY, "quantizer=hex", f"model.weights={tiny_ckpt}", "trainer.max_steps=2",
                   "eval.every_n_steps=0", f"hydra.run.dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    start = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    codec, config = load_codec(tmp_path / "checkpoints" / "last.ckpt")
    assert config["quantizer"]["lattice"] == "hex" and isinstance(codec.quantizer, LatticeQuantizer)
    w = "backbone.g_s.0.weight"
    moved = (codec.state_dict()[w] - start[f"codec.{w}"]).abs().max().item()
    assert 0 < moved < 0.005  # 2 Adam steps of 1e-4: fine-tuned from the checkpoint, not from a fresh initialisation
