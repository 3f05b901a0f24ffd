"""Scalar quantizers: the training relaxations and the shared hard quantization."""
from __future__ import annotations

import torch

from codecx.quantizers import MixedQuantizer, NoiseQuantizer, STEQuantizer, ste_round
from codecx.types import EntropyParams
from compressai.entropy_models import GaussianConditional


def _params(y):
    gc = GaussianConditional(None)
    return EntropyParams(torch.full_like(y, 0.3), torch.ones_like(y), gc)


def test_ste_round_has_identity_gradient():
    x = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    y = ste_round(x)
    y.sum().backward()
    assert torch.equal(y, torch.tensor([0.0, 2.0, -2.0]))
    assert torch.equal(x.grad, torch.ones(3))


def test_relaxations():
    torch.manual_seed(0)
    y = torch.randn(2, 4, 8, 8) * 3
    p = _params(y)
    noise = NoiseQuantizer().train()(y, p)
    assert (noise.y_hat - y).abs().max() <= 0.5 and not torch.equal(noise.y_hat, y)
    ste = STEQuantizer().train()(y, p)
    assert torch.equal(ste.y_hat, torch.round(y - 0.3) + 0.3)
    mixed = MixedQuantizer().train()(y, p)
    assert torch.equal(mixed.y_hat, ste.y_hat)
    # mixed: the rate term sees noise, not the rounded values
    assert not torch.equal(mixed.likelihoods, ste.likelihoods)


def test_eval_mode_is_the_same_hard_quantization():
    y = torch.randn(1, 3, 4, 4) * 2
    p = _params(y)
    outs = [q().eval()(y, p) for q in (NoiseQuantizer, STEQuantizer, MixedQuantizer)]
    for o in outs:
        assert torch.equal(o.y_hat, torch.round(y - 0.3) + 0.3)
        assert torch.equal(o.likelihoods, outs[0].likelihoods)
    # the bin mass of a unit Gaussian at its mean
    lik = NoiseQuantizer().eval()(torch.full((1, 1, 1, 1), 0.3), _params(torch.zeros(1, 1, 1, 1)))
    assert abs(lik.likelihoods.item() - 0.38292492) < 1e-6
