"""reg=cse: the conditional source entropy regularizer −H(X|X̂) (arXiv 2411.16727, Algorithm 1, eqs. 12–13),
trained through the real LitCodec phases and a real Lightning Trainer."""
from __future__ import annotations

import math

import hydra.utils
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from codecx.lit.module import LitCodec
from codecx.regularizers import CSERegularizer, NoRegularizer
from codecx.regularizers.source_models import (
    ContextSourceModel, GaussianSourceModel, discretized_gaussian_likelihood)
from codecx.types import CodecOutput
from conftest import ROOT, tiny_codec


def _images(n: int = 4, size: int = 64) -> torch.Tensor:
    """A fixed batch of random images (a tensor is a map-style dataset of images)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(123))


def _fit(name: str, reg, steps: int = 2, callbacks=(), tmp_path=None) -> LitCodec:
    torch.manual_seed(0)
    module = LitCodec(tiny_codec(name, N=8, M=8), reg, lmbda=0.01)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=list(callbacks), default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(_images(), batch_size=2))
    return module


def _out(x_hat: torch.Tensor) -> CodecOutput:
    return CodecOutput(x_hat=x_hat, y=x_hat, y_hat=x_hat, likelihoods={}, params=None)


# ---------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("mu,sigma", [(0.0, 0.05), (100.3, 3.0), (254.9, 0.2), (300.0, 10.0),
                                      (-20.0, 50.0), (128.0, 1e3)])
def test_discretized_likelihood_sums_to_one(mu, sigma):
    k = torch.arange(256.0)
    p = discretized_gaussian_likelihood(k, torch.full_like(k, mu), torch.full_like(k, sigma))
    assert (p >= 0).all()
    assert abs(p.double().sum().item() - 1) < 1e-5


def test_bits_per_pixel_counts_three_channels():
    """With mu = 255 X_hat = 255 X and sigma = 1, every symbol costs -log2 erf(1/(2 sqrt 2))
    bits; a pixel costs three of them."""
    q = GaussianSourceModel(hidden=4)
    with torch.no_grad():
        q.head.weight.zero_()
        q.head.bias.zero_()
        per = q.head.out_channels // 6  # parameters of the 4 pixels of each 2x2 block
        q.head.bias[3 * per:].fill_(math.log(math.expm1(1.0)))  # softplus -> sigma = 1
    x = torch.randint(1, 255, (2, 3, 8, 8)) / 255
    per_symbol = -math.log2(math.erf(0.5 / math.sqrt(2)))
    assert q.bits_per_pixel(x, x).item() == pytest.approx(3 * per_symbol, rel=1e-5)


# ---------------------------------------------------------------------- source models
def test_context_is_causal():
    """The prediction at a pixel depends only on pixels before it (raster order, all channels):
    perturbing pixel p changes no output at or before p, but does change the outputs of its
    right and lower neighbours (which see p through the 5x5 context)."""
    torch.manual_seed(0)
    q = ContextSourceModel(hidden=8)
    x, x_hat = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = torch.cat(q.params(x, x_hat), 1)
        for p in range(64):
            i, j = divmod(p, 8)
            x2 = x.clone()
            x2[..., i, j] = (torch.round(x2[..., i, j] * 255) + 128) % 256 / 255
            diff = (torch.cat(q.params(x2, x_hat), 1) - ref).abs().amax(1).flatten()
            assert diff[: p + 1].max() < 1e-6, f"output at or before pixel {p} saw pixel {p}"
            for r in ([p + 1] if j < 7 else []) + ([p + 8] if i < 7 else []):
                assert diff[r] > 1e-4, f"pixel {r} does not see pixel {p}"


def test_gaussian_model_ignores_x():
    q = GaussianSourceModel(hidden=8)
    x_hat = torch.rand(1, 3, 8, 8)
    a, b = q.params(torch.rand(1, 3, 8, 8), x_hat), q.params(torch.rand(1, 3, 8, 8), x_hat)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("cls", [GaussianSourceModel, ContextSourceModel])
def test_source_nll_decreases_on_fixed_pairs(cls):
    """Maximum likelihood (eq. 13) on fixed (X, X_hat) pairs lowers the NLL."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    x_hat = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    q = cls(hidden=16)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    first = q.bits_per_pixel(x, x_hat).item()
    for _ in range(50):
        opt.zero_grad()
        loss = q.bits_per_pixel(x, x_hat)
        loss.backward()
        opt.step()
    last = q.bits_per_pixel(x, x_hat).item()
    assert last < first - 0.3, (first, last)


# ---------------------------------------------------------------------- regularizer
def test_codec_term_sign_units_and_theta_frozen():
    """Eq. 12's term is -alpha * (bits per pixel of q): descending it raises -log q; the
    gradient reaches X_hat only, never theta."""
    reg = CSERegularizer(alpha=0.5, source_model="hyperprior", hidden=8)
    x = torch.rand(2, 3, 16, 16)
    x_hat = (x + 0.05 * torch.randn_like(x)).requires_grad_()
    out = reg(x, _out(x_hat))
    bpp = reg.q.bits_per_pixel(x, x_hat.detach())
    assert out.metrics["source_bpp"].item() == pytest.approx(bpp.item())
    assert out.loss.item() == pytest.approx(-0.5 * bpp.item())
    assert bpp.item() > 0
    out.loss.backward()
    assert x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in reg.q.parameters())
    with torch.no_grad():  # a descent step on the codec-phase term raises the source NLL
        assert reg.q.bits_per_pixel(x, x_hat - 1e-3 * x_hat.grad.sign()) > bpp


@pytest.mark.parametrize("name,kind", [("mbt_mean", "hyperprior"), ("bmshj_factorized", "hyperprior"),
                                       ("mbt", "autoregressive")])
def test_auto_picks_aligned_model(name, kind):
    reg = CSERegularizer(alpha=1.0)
    reg.attach(tiny_codec(name, N=8, M=8))
    assert reg.q.kind == kind
    forced = {"hyperprior": "autoregressive", "autoregressive": "hyperprior"}[kind]
    reg = CSERegularizer(alpha=1.0, source_model=forced)
    reg.attach(tiny_codec(name, N=8, M=8))
    assert reg.q.kind == forced


def test_validation_errors():
    with pytest.raises(ValueError, match=">= 0"):
        CSERegularizer(alpha=-0.1)
    with pytest.raises(ValueError, match="auto.*hyperprior.*autoregressive"):
        CSERegularizer(alpha=1.0, source_model="pixelcnn")
    with pytest.raises(RuntimeError, match="attach"):
        CSERegularizer(alpha=1.0).aux_phases()


def test_hydra_config_instantiates():
    cfg = OmegaConf.create({"alpha": 0.1, "reg": OmegaConf.load(ROOT / "codecx/conf/reg/cse.yaml")})
    reg = hydra.utils.instantiate(cfg.reg)
    assert isinstance(reg, CSERegularizer)
    assert (reg.alpha, reg.source_model, reg.lr) == (0.1, "auto", 1e-3)


# ---------------------------------------------------------------------- Algorithm 1 in LitCodec
class _PhaseRecorder(pl.Callback):
    """Records, between consecutive optimizer steps, which parameters received a gradient,
    and which parameters each step changed."""

    def __init__(self):
        self.events, self.changed = [], []

    def on_train_start(self, trainer, module):
        params = dict(module.named_parameters())
        for n, p in params.items():
            p.register_hook(lambda g, n=n: self.events.append(("grad", n)))
        for i, opt in enumerate(trainer.optimizers):
            def pre(opt, args, kwargs, i=i):
                self.events.append(("step", i))
                self._before = {n: p.detach().clone() for n, p in params.items()}

            def post(opt, args, kwargs, i=i):
                self.changed.append((i, {n for n, p in params.items()
                                         if not torch.equal(p, self._before[n])}))
            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)


@pytest.mark.parametrize("name", ["mbt_mean", "mbt"])
def test_phases_are_separate(name, tmp_path):
    """Algorithm 1: theta gets no gradient in the codec phase, the codec none in the source
    phase, and each optimizer step changes only its own parameters."""
    rec = _PhaseRecorder()
    module = _fit(name, CSERegularizer(alpha=1.0), steps=2, callbacks=[rec], tmp_path=tmp_path)
    names = {id(p): n for n, p in module.named_parameters()}
    owner = {names[id(p)]: i for i, opt in enumerate(module.trainer.optimizers)
             for g in opt.param_groups for p in g["params"]}
    theta = {n for n in owner if n.startswith("regularizers.0.q.")}
    assert theta and {owner[n] for n in theta} == {2}  # codec, quantiles, source
    pending, segments = set(), []
    for kind, v in rec.events:
        if kind == "grad":
            pending.add(v)
        else:
            segments.append((v, pending))
            pending = set()
    assert [i for i, _ in segments] == [0, 1, 2, 0, 1, 2]
    for i, grads in segments:
        assert grads, f"optimizer {i} stepped without gradients"
        assert all(owner[n] == i for n in grads), (i, sorted(n for n in grads if owner[n] != i))
        if i == 2:
            assert grads == theta
        if i == 0:
            assert any(n.startswith("codec.backbone.g_s") for n in grads)
    for i, changed in rec.changed:
        assert changed and all(owner[n] == i for n in changed), (i, changed)


def test_alpha_zero_matches_no_regularizer(tmp_path):
    """reg=cse alpha=0 and reg=none update the codec identically (same seed, 2 steps)."""
    a = _fit("mbt_mean", NoRegularizer(), tmp_path=tmp_path).codec.state_dict()
    b = _fit("mbt_mean", CSERegularizer(alpha=0.0), tmp_path=tmp_path).codec.state_dict()
    c = _fit("mbt_mean", CSERegularizer(alpha=1.0), tmp_path=tmp_path).codec.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # and alpha > 0 does change them
