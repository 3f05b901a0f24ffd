import os
import shutil

import lpips
import pytest
import torch
from torchvision import models as tvm

from codecx.metrics.lpips import LPIPSMetric
from codecx.metrics.weights import MissingWeightsError

ALEX_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(scope="module")
def alex_weights(tmp_path_factory):
    """A randomly initialised torchvision alexnet state_dict standing in for the ImageNet file."""
    torch.manual_seed(0)
    state = {k: v for k, v in tvm.alexnet().state_dict().items() if k.startswith("features.")}  # keep the file small
    path = tmp_path_factory.mktemp("w") / ALEX_FILE
    torch.save(state, path)
    return path


def test_missing_weights_error_names_file(tmp_path):
    with pytest.raises(MissingWeightsError) as e:
        LPIPSMetric()
    msg = str(e.value)
    assert ALEX_FILE in msg and str(tmp_path / "torch" / "hub" / "checkpoints" / ALEX_FILE) in msg
    assert "metrics.lpips.weights" in msg
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        LPIPSMetric(net="vgg", weights=tmp_path / "missing.pth")


def test_lpips_values_and_weights(alex_weights):
    m = LPIPSMetric(weights=alex_weights)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    assert torch.equal(m(x, x), torch.zeros(2))
    d = m(x, y)
    assert d.shape == (2,) and (d > 0).all()
    state = torch.load(alex_weights)
    assert torch.equal(getattr(m.model.net.slice2, "3").weight, state["features.3.weight"])  # backbone from our file
    shipped = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")
    lin = torch.load(shipped, map_location="cpu")
    assert torch.equal(m.model.lin0.model[1].weight, lin["lin0.model.1.weight"])  # linear layers ship with lpips
    m.train()
    assert not m.training and not m.model.training
    xg = x.clone().requires_grad_(True)
    m(xg, y).sum().backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in m.parameters())


def test_lpips_from_hub_cache(alex_weights, tmp_path):
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(alex_weights, cache / ALEX_FILE)
    m = LPIPSMetric()
    assert torch.equal(m.model.net.slice1[0].weight, torch.load(alex_weights)["features.0.weight"])


def test_wrong_state_dict_rejected(tmp_path):
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features"):
        LPIPSMetric(weights=tmp_path / "bad.pth")
