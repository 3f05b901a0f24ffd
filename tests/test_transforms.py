"""Latent compensation transforms (paper 000): LRP, LPC (learned / predicted), FPC, latent-MSE."""
from __future__ import annotations

import math

import pytest
import torch

from codecx.quantizers.scalar import ste_round
from codecx.transforms import FPC, LPC, LRP, LatentMSE, WalkState
from codecx.types import EntropyParams
from conftest import tiny_codec

M = 12


def _walk(codec, mode="train", shape=(2, M, 4, 4), seed=0):
    """(y, y_hat, state): a mean-scale prior and the STE-rounded y_hat of quantizer=mixed."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=g) * 3).requires_grad_(True)
    means = torch.randn(shape, generator=g)
    scales = torch.rand(shape, generator=g) + 0.2
    params = EntropyParams(means, scales, codec.backbone.gaussian_conditional)
    y_hat = ste_round(y - means) + means
    return y, y_hat, WalkState(codec=codec, mode=mode, y=y, params=params)


def _attached(t, name="mbt_mean"):
    codec = tiny_codec(name, "mixed", M=M)
    t.attach(codec)
    return t, codec


ALL = [lambda: LRP(hidden=16, hidden2=8), lambda: LPC("learned"), lambda: LPC("predicted", hidden=8),
       lambda: FPC(), lambda: LatentMSE(0.5)]
IDS = ["lrp", "lpc_learned", "lpc_predicted", "fpc", "latent_mse"]


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "eval", "decode"])
def test_shape_and_zero_init_identity_at_decode(make, mode):
    t, codec = _attached(make())
    y, y_hat, state = _walk(codec, mode)
    if mode == "decode":
        state.y = None
    out = t(y_hat, state)
    assert out.shape == y_hat.shape and torch.isfinite(out).all()
    if mode != "train" or isinstance(t, (LRP, LatentMSE)):
        # zero-initialised: a checkpoint's decoded output is unchanged
        assert torch.equal(out, y_hat)
    if mode == "decode":
        assert not state.losses and not state.metrics


def test_lrp_layers_follow_minnen_singh():
    t, _ = _attached(LRP())
    convs = [m for m in t.f if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (2 * M, 224, (5, 5), (1, 1)), (224, 128, (5, 5), (1, 1)), (128, M, (3, 3), (1, 1))]
    # the residual is bounded by 0.5 (the tanh), and the means enter f
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.05)
    _, y_hat, state = _walk(_attached(LRP())[1], "eval")
    out = t(y_hat, state)
    assert (out - y_hat).abs().max() <= 0.5 + 1e-6 and not torch.equal(out, y_hat)
    state.params.means = state.params.means + 1
    assert not torch.equal(t(y_hat, state), out)


def test_lpc_learned_parameters_and_sampling():
    t, _ = _attached(LPC("learned"))
    names = dict(t.named_parameters())
    assert set(names) == {"mu_r", "log_sigma_r"} and names["mu_r"].shape == (1, M, 1, 1)
    assert torch.allclose(names["log_sigma_r"].exp(), torch.full((1, M, 1, 1), 1 / 6))
    with torch.no_grad():
        t.mu_r.fill_(0.1)
        t.log_sigma_r.fill_(math.log(0.05))
    codec = _attached(LPC())[1]
    _, y_hat, state = _walk(codec, "train", shape=(4, M, 32, 32))
    r = t(y_hat, state) - y_hat
    assert abs(r.mean().item() - 0.1) < 0.005 and abs(r.std().item() - 0.05) < 0.005
    # at decode the mean: deterministic and exactly y_hat + mu_r
    state.mode = "decode"
    a, b = t(y_hat, state), t(y_hat, state)
    assert torch.equal(a, b) and torch.equal(a, y_hat + t.mu_r)


def test_lpc_predicted_reads_the_prior():
    t, codec = _attached(LPC("predicted", hidden=8))
    with torch.no_grad():
        t.predictor[-1].weight.normal_(0, 0.1)
    _, y_hat, state = _walk(codec, "eval")
    a = t(y_hat, state)
    assert not torch.equal(a, y_hat)  # per-element mu_r
    state.params.scales = state.params.scales * 2
    assert not torch.equal(t(y_hat, state), a)


def test_fpc_fixed_clamped_training_noise():
    t, codec = _attached(FPC())
    assert not list(t.parameters())
    _, y_hat, state = _walk(codec, "train", shape=(4, M, 32, 32))
    r = (t(y_hat, state) - y_hat).detach()
    assert r.abs().max() <= 0.5 + 1e-6
    assert abs(r.mean().item()) < 0.01 and abs(r.std().item() - 1 / 6) < 0.01


def test_latent_mse_term_by_hand():
    t, codec = _attached(LPC("learned", latent_mse=0.3))
    with torch.no_grad():
        t.mu_r.fill_(0.2)
    y, y_hat, state = _walk(codec, "eval")
    out = t(y_hat, state)
    expected = ((y.detach() - y_hat.detach() - 0.2) ** 2).sum().item() / y.numel()
    assert state.metrics["latent_mse_raw"].item() == pytest.approx(expected, rel=1e-6)
    assert state.losses["latent_mse"].item() == pytest.approx(0.3 * expected, rel=1e-6)
    # a second term (transform=[lpc,latent_mse]) adds to the first, measured on y_hat'
    LatentMSE(2.0)(out, state)
    assert state.losses["latent_mse"].item() == pytest.approx(2.3 * expected, rel=1e-6)
    # weight 0: logged, not in the loss
    state = _walk(codec, "train")[2]
    LatentMSE(0.0)(state.y.detach(), state)
    assert "latent_mse" not in state.losses and state.metrics["latent_mse_raw"].item() == 0


@pytest.mark.parametrize("make", ALL[:3], ids=IDS[:3])
def test_gradient_reaches_transform_and_encoder(make):
    t, codec = _attached(make())
    last = t.f[-1] if isinstance(t, LRP) else getattr(t, "predictor", [None])[-1]
    if last is not None:  # a zero last layer blocks the gradient to the earlier ones at step 0
        torch.nn.init.normal_(last.weight, 0, 0.01)
    t.latent_mse = 1.0
    y, y_hat, state = _walk(codec, "train")
    out = t(y_hat, state)
    (out.square().mean() + state.losses["latent_mse"]).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_options_and_backbones():
    with pytest.raises(ValueError, match="learned, predicted"):
        LPC("per_channel")
    with pytest.raises(ValueError, match="latent_mse"):
        LRP(latent_mse=-1)
    with pytest.raises(ValueError, match="factorized prior has none"):
        _attached(LPC("predicted"), "bmshj_factorized")
    with pytest.raises(RuntimeError, match="attach"):
        LRP()(torch.zeros(1, M, 2, 2), WalkState(codec=None, mode="eval"))
    with pytest.warns(UserWarning, match="quantizer=mixed"):
        LRP(hidden=4, hidden2=4).attach(tiny_codec("mbt_mean", "noise", M=M))


def test_factorized_prior_uses_channel_medians():
    """bmshj_factorized: LRP / LPC(learned) work, the 'means' being the bottleneck's medians."""
    codec = tiny_codec("bmshj_factorized", "mixed", M=M)
    x = torch.rand(1, 3, 64, 64)
    y = codec.backbone.g_a(x)
    params = codec.backbone.params(None, like=y)
    for t in (LRP(hidden=8, hidden2=8), LPC("learned")):
        t.attach(codec)
        out = t(y, WalkState(codec=codec, mode="eval", y=y, params=params))
        assert out.shape == y.shape
