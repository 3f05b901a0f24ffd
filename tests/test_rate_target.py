"""rate=target: HiFiC rate targeting picks lambda per image (MS-ILLM appendix A.1)."""
from __future__ import annotations

import math

import pytest
import torch

from codecx.losses.rate import Rate, TargetRate, bits_per_image_pixel


def _likelihoods_for(bpps, h=8, w=8):
    """Likelihoods whose images cost exactly `bpps` bits per pixel (y and z split 3:1)."""
    y, z = [], []
    for b in bpps:
        bits = b * h * w
        y.append(torch.full((1, 4, 2, 2), 2.0 ** (-0.75 * bits / 16)))
        z.append(torch.full((1, 2, 1, 2), 2.0 ** (-0.25 * bits / 4)))
    return {"y": torch.cat(y), "z": torch.cat(z)}


def test_per_image_weights_and_term():
    r = TargetRate(target_bpp=0.14, warmup_steps=10)
    assert (r.lambda_a, r.lambda_b) == (2.0, 2.0**-4)  # MS-ILLM's table for 0.14 bpp
    bpps = [0.05, 0.15, 0.19, 0.25]
    lik = _likelihoods_for(bpps)
    x = torch.zeros(4, 3, 8, 8)
    assert torch.allclose(bits_per_image_pixel(lik, 64), torch.tensor(bpps), atol=1e-5)
    # after the warm-up: target 0.14, lambda_a 2
    term, m = r(lik, x, step=10)
    lam = torch.tensor([2**-4, 2, 2, 2])
    assert term.item() == pytest.approx((lam * torch.tensor(bpps)).mean().item(), rel=1e-5)
    assert m["bpp"].item() == pytest.approx(sum(bpps) / 4, rel=1e-5)
    assert m["above_target"].item() == 0.75
    # during the warm-up: target 0.14 * 1.429 = 0.2001, lambda_a 2 * 0.5 = 1
    term, m = r(lik, x, step=9)
    lam = torch.tensor([2**-4, 2**-4, 2**-4, 1.0])
    assert term.item() == pytest.approx((lam * torch.tensor(bpps)).mean().item(), rel=1e-5)
    assert m["rate_target"].item() == pytest.approx(0.14 * 1.429)
    # the batch's unweighted rate equals rate=bpp's
    assert m["bpp"].item() == pytest.approx(Rate()(lik, x)[0].item(), rel=1e-5)


def test_gradient_weighs_each_image():
    r = TargetRate(target_bpp=0.07, warmup_steps=0)
    lik = _likelihoods_for([0.05, 0.1])
    lik = {k: v.clone().requires_grad_(True) for k, v in lik.items()}
    term, _ = r(lik, torch.zeros(2, 3, 8, 8), step=0)
    term.backward()
    g = lik["y"].grad.flatten(1).abs().mean(1) * lik["y"].detach().flatten(1).mean(1)
    # d(lambda * -log2 p)/dp * p is lambda / ln 2 / pixels / batch: ratio lambda_a / lambda_b
    assert (g[1] / g[0]).item() == pytest.approx(4.0 / 2**-4, rel=1e-4)


def test_bad_settings():
    with pytest.raises(ValueError, match="no lambda_a for target_bpp=0.2"):
        TargetRate(target_bpp=0.2)
    assert TargetRate(target_bpp=0.2, lambda_a=3).lambda_a == 3
    with pytest.raises(ValueError, match="lambda_a > lambda_b"):
        TargetRate(target_bpp=0.3, lambda_a=0.01)
    with pytest.raises(ValueError, match="target_bpp"):
        TargetRate(target_bpp=0)


@pytest.mark.parametrize("target, lam", [("0.07", 4.0), ("0.14", 2.0), ("0.3", 1.0)])
def test_recipes_compose(target, lam):
    """experiment=illm_<target>: the stage-1 recipe (HiFiC model, mse_lpips, rate targeting)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from codecx.train import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=illm_{target}"])
    assert cfg.rate._target_.endswith("TargetRate") and cfg.rate.target_bpp == float(target)
    assert cfg.distortion._target_.endswith("MSELPIPS") and cfg.lmbda == 1
    assert cfg.model._target_ == "codecx.models.hific.HiFiC"
    assert cfg.schedule.optimizer == "adamw" and cfg.schedule.lr == 3e-4
    assert cfg.schedule.weight_decay == 5e-5 and cfg.schedule.warmup_steps == 10000
    assert math.isclose(instantiate(cfg.rate).lambda_a, lam)
