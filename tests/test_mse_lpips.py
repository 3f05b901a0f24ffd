"""distortion=mse_lpips: 150 * MSE + LPIPS-Alex with the eps inside the square root (MS-ILLM).
Random-init AlexNet / VGG weights saved to a temp file stand in for the ImageNet ones."""
from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from codecx.losses.distortion import MSELPIPS, LPIPSLoss, normalize_features


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "alexnet-owt-7be5be79.pth"
    torch.save(tvm.alexnet(weights=None).state_dict(), p)
    return p


def _pair(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=g)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_value_is_150_mse_plus_lpips_of_the_metric(alex_file):
    """The loss equals 150 * MSE + LPIPS, LPIPS as codecx's metric (the lpips package) computes
    it on the same weights (the eps placement changes it by < 1e-4 relative)."""
    from codecx.metrics.lpips import LPIPSMetric

    x, x_hat = _pair()
    d = MSELPIPS(lpips_weights=str(alex_file))
    value, m = d(x, x_hat)
    ref = LPIPSMetric("alex", weights=str(alex_file))(x, x_hat).mean()
    mse = torch.mean((x - x_hat) ** 2)
    assert m["lpips"].item() == pytest.approx(ref.item(), rel=1e-4)
    assert value.item() == pytest.approx(150 * mse.item() + ref.item(), rel=1e-4)
    assert set(m) >= {"mse", "psnr", "lpips"}
    assert d(x, x)[0].item() == pytest.approx(0, abs=1e-6)
    # only x_hat gets gradients; the LPIPS network is frozen and stays in eval mode
    x_hat.requires_grad_(True)
    d.train()(x, x_hat)[0].backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all()
    assert not any(p.requires_grad for p in d.parameters()) and not d.lpips.training


def test_eps_inside_sqrt_keeps_gradients_finite():
    """At an all-zero feature vector (a dead ReLU pixel) LPIPS' own normalisation has an
    infinite gradient (NaN after the chain rule); with the eps inside the root it is finite."""
    from lpips import normalize_tensor

    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    normalize_features(f).sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.zeros(1, 4, 2, 2, requires_grad=True)
    (normalize_tensor(g) - 1).pow(2).sum().backward()
    assert not torch.isfinite(g.grad).all()
    v = torch.randn(1, 4, 3, 3)
    assert torch.allclose(normalize_features(v).norm(dim=1), torch.ones(1, 3, 3), atol=1e-6)


def test_vgg_backbone_for_the_labeler(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "vgg16-397923af.pth"
    features = tvm.vgg.make_layers(tvm.vgg.cfgs["D"])  # VGG16's features, without the classifier
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, p)
    loss = LPIPSLoss("vgg", str(p))
    x, x_hat = _pair(1, 32)
    assert loss(x, x_hat).item() > 0 and loss(x, x).item() == pytest.approx(0, abs=1e-6)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth.*distortion.lpips_weights"):
        MSELPIPS(lpips_weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision alex state dict"):
        MSELPIPS(lpips_weights=str(bad))
