"""reg=cse conventions the CSE paper (arXiv 2411.16727, eq. 12) leaves open: the bin width of X's
discretisation (`reg.bin_width`) and the units of E[log q] (`reg.units`): known constants,
the defaults reproducing the original convention bit for bit, config errors, training steps."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from compressai.ops import LowerBound
from torch.special import ndtr
from torch.utils.data import DataLoader

from codecx.conf import CONF_DIR
from codecx.config import ConfigError, precheck
from codecx.lit.module import LitCodec
from codecx.regularizers import CSERegularizer
from codecx.regularizers.cse import UNITS, in_units
from codecx.regularizers.source_models import (
    GaussianSourceModel, discretized_gaussian_likelihood, gaussian_density, last_bin, to_bins)
from codecx.types import CodecOutput
from conftest import tiny_codec

pytestmark = pytest.mark.usefixtures("one_thread")
LN2 = math.log(2)


def _out(x_hat: torch.Tensor) -> CodecOutput:
    return CodecOutput(x_hat=x_hat, y=x_hat, y_hat=x_hat, likelihoods={}, params=None)


def _fixed(reg: CSERegularizer, sigma: float) -> CSERegularizer:
    """Source model with mu = 255 X_hat and a constant sigma (0..255 units) everywhere."""
    q = reg.q
    with torch.no_grad():
        q.head.weight.zero_()
        q.head.bias.zero_()
        per = q.head.out_channels // 6
        q.head.bias[3 * per:].fill_(sigma + math.log(-math.expm1(-sigma)))  # softplus^-1
    return reg


def _reg(units="bpp", bin_width=1, sigma=None, alpha=1.0) -> CSERegularizer:
    torch.manual_seed(0)
    reg = CSERegularizer(alpha=alpha, source_model="hyperprior", hidden=8, units=units,
                         bin_width=bin_width)
    return _fixed(reg, sigma) if sigma is not None else reg


def _term(reg: CSERegularizer, x, x_hat) -> float:
    """The regularizer's value -loss / alpha: E[-log q] in reg.units."""
    return (-reg(x, _out(x_hat)).loss / reg.alpha).item()


def _levels(lo: int, hi: int, shape=(2, 3, 8, 8), seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g) / 255


# ---------------------------------------------------------------------- defaults
def _old_bits_per_pixel(q: GaussianSourceModel, x, x_hat):
    """The convention before reg.bin_width / reg.units existed, written out independently:
    8-bit symbols, unit bins [k-1/2, k+1/2], tails in bins 0 and 255, -log2 summed over RGB."""
    mu, sigma = q.params(x, x_hat)
    k = torch.round(x.clamp(0, 1) * 255)
    hi = ((k + 0.5 - mu) / sigma).masked_fill(k >= 255, math.inf)
    lo = ((k - 0.5 - mu) / sigma).masked_fill(k <= 0, -math.inf)
    s = torch.where(lo > 0, -1.0, 1.0)
    p = LowerBound(1e-9)(s * (ndtr(s * hi) - ndtr(s * lo)))
    n, _, h, w = x.shape
    return -torch.log2(p).sum() / (n * h * w)


def test_defaults_reproduce_the_original_convention_exactly():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 254.6 / 255])  # edge bins, rounding
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    default = _reg()
    explicit = _reg(units="bpp", bin_width=1.0)
    assert (default.units, default.bin_width, default.q.bin_width) == ("bpp", 1.0, 1.0)
    old = _old_bits_per_pixel(default.q, x, x_hat)
    a, b = default(x, _out(x_hat)), explicit(x, _out(x_hat))
    assert torch.equal(a.loss, -1.0 * old) and torch.equal(b.loss, a.loss)
    assert torch.equal(a.metrics["source_bpp"], old)
    assert torch.equal(to_bins(x, 1.0), torch.round(x * 255)) and last_bin(1) == 255


def test_yaml_defaults_are_the_original_convention():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from codecx.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        reg = instantiate(compose("train", overrides=["reg=cse"]).reg)
        other = instantiate(compose("train", overrides=[
            "reg=cse", "reg.units=nats_per_dim", "reg.bin_width=continuous"]).reg)
    GlobalHydra.instance().clear()
    assert (reg.units, reg.bin_width) == ("bpp", 1)
    assert (other.units, other.bin_width) == ("nats_per_dim", "continuous")


# ---------------------------------------------------------------------- units
def test_units_are_exact_rescalings_of_bpp():
    x = _levels(0, 255)
    x_hat = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    out = {u: _reg(u)(x, _out(x_hat)) for u in ("bpp", "bits_per_dim", "nats_per_dim")}
    bpp = out["bpp"].metrics["source_bpp"]
    assert all(torch.equal(o.metrics["source_bpp"], bpp) for o in out.values())  # always bpp
    assert torch.equal(out["bpp"].loss, -bpp)
    assert torch.equal(out["bits_per_dim"].loss, -(bpp / 3))
    assert out["nats_per_dim"].loss.item() == pytest.approx(-bpp.item() * LN2 / 3, rel=1e-6)
    assert set(UNITS) == {"bpp", "bits_per_dim", "nats_per_dim"}


@pytest.mark.parametrize("units,per_dim", [("bpp", 3.0), ("bits_per_dim", 1.0), ("nats_per_dim", LN2)])
def test_two_equiprobable_bins_cost_one_bit_per_dim(units, per_dim):
    """bin_width=255: bins centred at 0 and 255, split at 127.5; with mu = 127.5 (X_hat = 1/2)
    either bin has q = 1/2 whatever sigma: log2 2 = 1 bit per dim, 3 bpp, ln 2 nats per dim."""
    x = _levels(0, 255)
    for sigma in (0.5, 7.0, 300.0):
        reg = _reg(units, bin_width=255, sigma=sigma)
        assert _term(reg, x, torch.full_like(x, 0.5)) == pytest.approx(per_dim, rel=1e-6)


def test_one_bin_costs_nothing():
    """bin_width=512: one bin holds every 8-bit value (both tails): q = 1, 0 bits, no gradient."""
    reg = _reg(bin_width=512, sigma=3.0)
    x = _levels(0, 255)
    x_hat = x.clone().requires_grad_()
    out = reg(x, _out(x_hat))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert x_hat.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("w", [0.25, 4.0])
def test_bin_width_subtracts_log2_width_per_dim(w):
    """For bins much narrower than sigma, H_w = H_1 - log2 w per dim (interior pixels,
    mu = X exactly, sigma = 64 levels: the next-order terms are below 0.001 bits)."""
    x = _levels(64, 192)
    h1 = _term(_reg("bits_per_dim", 1, sigma=64.0), x, x)
    hw = _term(_reg("bits_per_dim", w, sigma=64.0), x, x)
    assert hw - h1 == pytest.approx(-math.log2(w), abs=1e-3)


def test_continuous_is_the_density_at_one_level_reference_width():
    """mu = X, sigma = 1 level: -log2 N(0; 0, 1) = log2(2 pi)/2 per dim; and for bins much
    narrower than sigma, H_w + log2 w tends to the density's value."""
    x = _levels(1, 254)
    c = _term(_reg("bits_per_dim", "continuous", sigma=1.0), x, x)
    assert c == pytest.approx(0.5 * math.log2(2 * math.pi), rel=1e-6)
    y = _levels(8, 247)
    y_hat = y + 2 / 255
    c8 = _term(_reg("bits_per_dim", "continuous", sigma=8.0), y, y_hat)
    fine = _term(_reg("bits_per_dim", 1 / 16, sigma=8.0), y, y_hat)
    assert fine - 4.0 == pytest.approx(c8, abs=1e-4)


# ---------------------------------------------------------------------- gradient (docs/methods/cse.md)
def _grad_mu(v: float, mu: float, sigma: float, w) -> float:
    """d(-ln q)/d mu for the 8-bit value v (bin width w, or the density when w is None)."""
    m = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    vt, s = torch.tensor(v, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    if w is None:
        p = gaussian_density(vt, m, s)
    else:
        k = torch.floor(vt / w + 0.5)
        p = discretized_gaussian_likelihood(k, m, s, w)
    (-torch.log(p)).backward()
    return m.grad.item()


@pytest.mark.parametrize("w", [1.0, 4.0, 8.0])
def test_bin_width_scales_the_gradient_by_sheppards_factor(w):
    """docs/methods/cse.md: for a bin centred at c, d(-ln q)/d mu = -(c - mu)/sigma^2 (1 - w^2/(12 sigma^2))
    + O((w/sigma)^4): the density's gradient, shrunk by Sheppard's correction."""
    sigma, mu = 16.0, 100.0
    c = 120.0  # a bin centre for every w of the test
    dense = _grad_mu(c, mu, sigma, None)
    assert dense == pytest.approx(-(c - mu) / sigma ** 2, rel=1e-9)
    ratio = _grad_mu(c, mu, sigma, w) / dense
    assert ratio == pytest.approx(1 - w * w / (12 * sigma ** 2), abs=0.02 * (w / sigma) ** 4 + 1e-10)


def test_bins_much_wider_than_sigma_leave_no_gradient_inside():
    """w >> sigma: deep inside a bin q ~ 1 and the push on mu vanishes; the density's does not."""
    assert abs(_grad_mu(128.0, 120.0, 2.0, 64.0)) < 1e-6
    assert _grad_mu(128.0, 120.0, 2.0, None) == pytest.approx(-2.0)


def test_discretized_likelihood_sums_to_one_for_every_width():
    for w in (0.3, 1.0, 2.0, 3.0, 7.5, 64.0, 255.0, 512.0):
        k = torch.arange(0.0, last_bin(w) + 1)
        for mu, sigma in ((0.0, 0.05), (100.3, 3.0), (254.9, 0.2), (300.0, 10.0), (128.0, 1e3)):
            p = discretized_gaussian_likelihood(k, torch.full_like(k, mu), torch.full_like(k, sigma), w)
            assert (p >= 0).all() and abs(p.double().sum().item() - 1) < 1e-6, (w, mu, sigma)


def test_bins_tile_the_8_bit_range():
    """Every 8-bit value v lies in its bin [(j-1/2) w, (j+1/2) w); 0 in bin 0, 255 in the last."""
    v = torch.arange(256.0)
    for w in (1.0, 2.0, 3.0, 7.5, 64.0, 255.0):
        j = to_bins(v / 255, w)
        assert ((j - 0.5) * w <= v).all() and (v < (j + 0.5) * w).all()
        assert j[0] == 0 and j[-1] == last_bin(w) and (j.diff() >= 0).all()


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    ({"units": "bits"}, r"reg.units='bits': choose one of \['bpp', 'bits_per_dim', 'nats_per_dim'\]"),
    ({"bin_width": 0}, r"reg.bin_width=0: .*> 0.*continuous"),
    ({"bin_width": -2.0}, r"reg.bin_width=-2.0"),
    ({"bin_width": "coarse"}, r"reg.bin_width='coarse'"),
    ({"bin_width": float("nan")}, r"reg.bin_width=nan"),
    ({"bin_width": True}, r"reg.bin_width=True"),
])
def test_bad_values_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CSERegularizer(alpha=0.1, **kwargs)
    with pytest.raises(ValueError, match="reg.units"):
        in_units(1.0, "nats")


@pytest.mark.parametrize("override,match", [("reg.units=bits", r"reg.units='bits'"),
                                            ("reg.bin_width=0", r"reg.bin_width=0"),
                                            ("reg.bin_width=-1", r"reg.bin_width=-1")])
def test_bad_values_are_config_errors_before_training(override, match):
    from codecx.train import validate_config

    with pytest.raises(ConfigError, match=match):
        precheck(["reg=cse", override, "model.N=8", "model.M=8"], CONF_DIR, validate=validate_config)


# ---------------------------------------------------------------------- training
class _Logged(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.rows.append({k: float(m[f"train/{k}"]) for k in ("source_bpp", "reg_loss")})


@pytest.mark.parametrize("units,bin_width", [("bpp", 1), ("bits_per_dim", 1), ("nats_per_dim", 1),
                                             ("bpp", 16), ("nats_per_dim", "continuous")])
def test_a_training_step_runs_with_each_option(units, bin_width, tmp_path):
    """Two real Lightning steps (codec phase, then theta's maximum likelihood) with each
    option; the logged term is -alpha * source_bpp in the chosen units."""
    torch.manual_seed(0)
    reg = CSERegularizer(alpha=0.5, hidden=8, units=units, bin_width=bin_width)
    module = LitCodec(tiny_codec("mbt_mean", N=8, M=8), reg, lmbda=0.01)
    theta0 = [p.detach().clone() for p in reg.q.parameters()]
    log = _Logged()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[log], default_root_dir=tmp_path)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(123))
    trainer.fit(module, DataLoader(images, batch_size=2))
    assert trainer.global_step > 0 and len(log.rows) == 2
    for row in log.rows:
        assert math.isfinite(row["source_bpp"])
        assert row["reg_loss"] == pytest.approx(-0.5 * in_units(row["source_bpp"], units), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(theta0, reg.q.parameters()))
