"""model=hific: the HiFiC-size mean-scale hyperprior of MS-ILLM (tiny widths here; the full
size only in a parameter count that never runs it)."""
from __future__ import annotations

import pytest
import torch

from codecx.models import Codec
from codecx.models.hific import ChannelNorm2d, HiFiC
from codecx.quantizers import NoiseQuantizer

TINY = dict(N=8, M=12, channels=(4, 4, 6, 6, 8), num_residual_blocks=2)


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def test_full_size_parameter_count():
    """The paper's widths (60-120-240-480-960 -> 220, 9 residual blocks, hyper 320), counted
    layer by layer from METHODS.md; built on the meta device (nothing allocated or run)."""
    with torch.device("meta"):
        m = HiFiC()
    c, M, N, cn = [60, 120, 240, 480, 960], 220, 320, lambda ch: 2 * ch
    g_a = _conv(3, 60, 7) + cn(60) + sum(_conv(a, b, 3) + cn(b) for a, b in zip(c, c[1:]))
    g_a += _conv(960, M, 3)
    r = c[::-1]
    g_s = cn(M) + _conv(M, 960, 3) + cn(960) + 9 * 2 * (_conv(960, 960, 3) + cn(960))
    g_s += sum(_conv(a, b, 3) + cn(b) for a, b in zip(r, r[1:])) + _conv(60, 3, 7)
    h_a = _conv(M, N, 3) + 2 * _conv(N, N, 5)
    h_s = 2 * (2 * _conv(N, N, 5) + _conv(N, M, 3))
    count = {k: sum(p.numel() for p in getattr(m, k).parameters()) for k in ("g_a", "g_s", "h_a", "h_s")}
    assert count == {"g_a": g_a, "g_s": g_s, "h_a": h_a, "h_s": h_s}
    total = sum(p.numel() for p in m.parameters())
    assert 181e6 < total < 182e6  # HiFiC's ~181M parameters
    assert (m.N, m.M, m.stride, m.entropy_bottleneck.channels) == (320, 220, 64, 320)


def test_channel_norm_normalises_each_pixel_over_channels():
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    cn = ChannelNorm2d(5)
    y = cn(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 4), atol=1e-5)
    v = x.var(1)
    assert torch.allclose(y.var(1), v / (v + 1e-3), atol=1e-5)  # unbiased variance, eps 1e-3
    with pytest.raises(ValueError, match="at least 2 channels"):
        ChannelNorm2d(1)


def test_one_training_step_changes_every_transform():
    torch.manual_seed(0)
    codec = Codec(HiFiC(**TINY), NoiseQuantizer()).train()
    x = torch.rand(2, 3, 64, 64)
    out = codec(x)
    assert out.x_hat.shape == x.shape and out.y_hat.shape == (2, 12, 4, 4)
    assert out.likelihoods["z"].shape == (2, 8, 1, 1)
    bpp = sum(-torch.log2(v).sum() for v in out.likelihoods.values()) / (2 * 64 * 64)
    loss = bpp + 0.01 * 255**2 * torch.mean((out.x_hat - x) ** 2)
    before = {n: p.detach().clone() for n, p in codec.named_parameters()}
    opt = torch.optim.Adam(codec.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    changed = {n.split(".")[1] for n, p in codec.named_parameters() if not torch.equal(p, before[n])}
    assert {"g_a", "g_s", "h_a", "h_s", "entropy_bottleneck"} <= changed


@pytest.mark.parametrize("quantizer", ["noise", "hex"])
def test_real_round_trip_equals_eval_reconstruction(quantizer, tmp_path):
    from codecx.quantizers import LatticeQuantizer

    torch.manual_seed(1)
    bb = HiFiC(**TINY)
    q = NoiseQuantizer() if quantizer == "noise" else LatticeQuantizer("hex")
    codec = Codec(bb, q).eval()
    codec.update(force=True)
    x = torch.rand(2, 3, 70, 90)  # padded to 128 x 128 (stride 64), then cropped
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
    assert torch.equal(dec, out.x_hat.clamp(0, 1))
    # weights= loads a state dict saved from another instance of the same widths
    path = tmp_path / "hific.pth"
    torch.save(bb.state_dict(), path)
    again = HiFiC(**TINY, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), bb.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="no such file"):
        HiFiC(**TINY, weights=str(tmp_path / "missing.pth"))


def test_config_node_builds_the_backbone():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from codecx.train import CONF_DIR

    node = OmegaConf.load(f"{CONF_DIR}/model/hific.yaml")
    assert node._target_ == "codecx.models.hific.HiFiC" and node.M == 220 and node.N == 320
    node.N, node.M = 8, 12
    bb = instantiate(node, channels=[4, 4, 6, 6, 8], num_residual_blocks=1)
    assert isinstance(bb, HiFiC) and bb.name == "hific" and bb.scale_levels == 256
