"""Shallow decoders (Yang & Mandt, ICCV 2023): shapes, the paper's parameter count, ELIC's
analysis, one real Lightning training step and an exact real round trip for each variant."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from codecx.conf import CONF_DIR
from codecx.lit import LitCodec
from codecx.models import Codec
from codecx.models.shallow import (JpegLike, JpegLikeSynthesis, Shallow, TwoLayerSynthesis)
from codecx.quantizers import NoiseQuantizer
from codecx.regularizers import NoRegularizer

CONF = Path(CONF_DIR) / "model"

# (class, kwargs) of the three variants, tiny: C=16, CNN analysis
VARIANTS = {
    "shallow": (Shallow, {}),
    "shallow_no_residual": (Shallow, {"residual": False}),
    "jpeg_like": (JpegLike, {}),
}


def _tiny(variant: str):
    cls, kw = VARIANTS[variant]
    return cls(N=8, M=16, analysis="cnn", **kw)


def test_two_layer_synthesis_parameter_count_and_stride():
    """C=320, 12 hidden channels: 1,299,003 parameters (arXiv 2304.06244); exactly x16 upsampling."""
    s = TwoLayerSynthesis(320, 12, residual=True)
    assert sum(p.numel() for p in s.parameters()) == 1_299_003
    y = torch.randn(1, 320, 3, 5)
    assert s(y).shape == (1, 3, 48, 80)
    s24 = TwoLayerSynthesis(320, 24, residual=False)
    assert s24.conv_res is None and s24(y).shape == (1, 3, 48, 80)
    assert JpegLikeSynthesis(320)(y).shape == (1, 3, 48, 80)
    assert sum(p.numel() for p in JpegLikeSynthesis(320).parameters()) == 320 * 3 * 18 * 18 + 3


def test_residual_joins_the_hidden_layer():
    """x_hat = conv2(IGDN1(conv1(y)) + conv_res(y)): the residual enters before conv2."""
    torch.manual_seed(0)
    s = TwoLayerSynthesis(4, 3).eval()
    y = torch.randn(1, 4, 2, 2)
    want = s.conv2(s.igdn(s.conv1(y)) + s.conv_res(y))
    assert torch.allclose(s(y), want)
    assert not torch.allclose(s(y), s.conv2(s.igdn(s.conv1(y))) + 0)


def test_variants_sizes_and_stride():
    m = Shallow(N=8, M=16, analysis="cnn")
    assert m.stride == 64 and m.hidden == 12 and m.g_s.conv_res is not None
    assert Shallow(N=8, M=16, analysis="cnn", residual=False).hidden == 24
    x = torch.rand(1, 3, 64, 128)
    for v in VARIANTS:
        bb = _tiny(v)
        y = bb.g_a(x)
        assert y.shape == (1, 16, 4, 8) and bb.g_s(y).shape == x.shape
    with pytest.raises(ValueError, match="model.analysis='vgg'"):
        Shallow(N=8, M=16, analysis="vgg")


def test_elic_analysis_is_compressai_elic_g_a():
    """analysis=elic is CompressAI's Elic2022Official.g_a: its state dict loads, same output."""
    from compressai.models import Elic2022Official

    torch.manual_seed(0)
    ref = Elic2022Official(N=8, M=16, groups=[8, 8]).g_a.eval()
    m = Shallow(N=8, M=16, analysis="elic").eval()
    m.g_a.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.g_a(x), ref(x))


@pytest.mark.parametrize("name", ["shallow", "jpeg_like"])
def test_config_nodes_instantiate_and_load_weights(name, tmp_path):
    """codecx/conf/model/NAME.yaml is a `_target_` node; `weights` loads a state dict."""
    node = OmegaConf.load(CONF / f"{name}.yaml")
    node.N, node.M, node.analysis, node.scale_levels = 8, 16, "cnn", 64
    bb = instantiate(node)
    assert type(bb) is {"shallow": Shallow, "jpeg_like": JpegLike}[name] and bb.scale_levels == 64
    p = tmp_path / "w.pth"
    torch.save(bb.state_dict(), p)
    node.weights = str(p)
    again = instantiate(node)
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), again.state_dict().values()))
    node.weights = str(tmp_path / "missing.pth")
    with pytest.raises(Exception, match="model.weights=.*missing.pth: no such file"):
        instantiate(node)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_training_step(variant):
    pl.seed_everything(0)
    module = LitCodec(Codec(_tiny(variant), NoiseQuantizer()), NoRegularizer(), lmbda=0.01)
    before = {n: p.detach().clone() for n, p in module.codec.named_parameters()}
    g = torch.Generator().manual_seed(0)
    imgs = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 64, 64, generator=g), 5, 1, 2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(list(imgs), batch_size=2))
    assert trainer.global_step == 1
    after = dict(module.codec.named_parameters())
    assert not torch.equal(before["backbone.g_s.0.weight" if variant == "jpeg_like"
                                  else "backbone.g_s.conv1.weight"], after[
        "backbone.g_s.0.weight" if variant == "jpeg_like" else "backbone.g_s.conv1.weight"])
    assert not torch.equal(before["backbone.g_a.0.weight"], after["backbone.g_a.0.weight"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_round_trip_equals_eval_forward(variant):
    torch.manual_seed(1)
    codec = Codec(_tiny(variant), NoiseQuantizer()).eval()
    codec.update(force=True)
    x = torch.rand(1, 3, 70, 90)  # padded to the stride 64, then cropped
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
    assert x_dec.shape == x.shape
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    assert all(len(s) > 0 for s in enc["strings"][0])


def test_lattice_quantizer_codes_the_shallow_decoder_exactly():
    """quantizer=hex on the shallow backbone: real coding reproduces the eval forward."""
    from codecx.quantizers import LatticeQuantizer

    torch.manual_seed(2)
    codec = Codec(_tiny("shallow"), LatticeQuantizer(lattice="hex")).eval()
    codec.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = codec(x)
        enc = codec.compress(x)
        x_dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"],
                                 enc.get("options"))
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))


@pytest.mark.medium
def test_benchmark_runs_quick():
    """`python -m benchmarks --only shallow_sga --quick` (random weights) reports every row."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "shallow_sga", "--quick",
                        "--threads", "1", "--sga-ckpt", "random"], cwd=root, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = r.stdout[r.stdout.index("\nSummary"):]
    for metric in ("shallow_gs_time", "jpeg_like_gs_time", "shallow_gs_kmacs", "sga_encode_per_100_steps"):
        assert metric in summary
    assert "5.331" in summary


def test_shallow_cnn_analysis_slope_is_point_two(tmp_path):
    """analysis=cnn uses leaky ReLU 0.2 (shallow-ntc's tf.nn.leaky_relu); model.negative_slope
    sets another; a checkpoint whose config predates the key gets 0.01, the slope it was trained with."""
    from codecx.models.shallow import restore_legacy_slope

    slopes = lambda m: {a.negative_slope for a in m.g_a.modules() if isinstance(a, torch.nn.LeakyReLU)}  # noqa: E731
    assert slopes(Shallow(N=8, M=16, analysis="cnn")) == {0.2}
    assert slopes(JpegLike(N=8, M=16, analysis="cnn", negative_slope=0.01)) == {0.01}
    assert OmegaConf.load(CONF / "shallow.yaml").negative_slope == 0.2
    assert OmegaConf.load(CONF / "jpeg_like.yaml").negative_slope == 0.2
    old = Shallow(N=8, M=16, analysis="cnn")
    restore_legacy_slope(old, {"analysis": "cnn", "N": 8, "M": 16})
    assert slopes(old) == {0.01}
    new = Shallow(N=8, M=16, analysis="cnn")
    restore_legacy_slope(new, {"analysis": "cnn", "negative_slope": 0.2})
    assert slopes(new) == {0.2}
    with pytest.raises(ValueError, match="model.negative_slope=-1"):
        Shallow(N=8, M=16, analysis="cnn", negative_slope=-1)


def test_legacy_cnn_checkpoint_keeps_its_slope(tmp_path):
    """A checkpoint whose config has no `negative_slope` (written before the key existed)
    evaluates with the 0.01 it was trained with; one that names the slope keeps it."""
    from codecx.eval.load import load_codec
    from codecx.models.build import build_codec

    for model, expected in (({}, 0.01), ({"negative_slope": 0.2}, 0.2)):
        config = {"model": {"_target_": "codecx.models.shallow.Shallow", "name": "shallow", "N": 8, "M": 16,
                            "analysis": "cnn", "weights": None, **model},
                  "quantizer": {"_target_": "codecx.quantizers.NoiseQuantizer"}}
        codec = build_codec(config)
        path = tmp_path / f"slope{expected}.ckpt"
        torch.save({"codecx_config": config, "state_dict": {f"codec.{k}": v for k, v in codec.state_dict().items()},
                    "global_step": 1}, path)
        loaded, cfg = load_codec(path)
        assert {a.negative_slope for a in loaded.backbone.g_a.modules()
                if isinstance(a, torch.nn.LeakyReLU)} == {expected}
        assert cfg["model"] == config["model"] | {"weights": None}  # the config (and fingerprint) as written
