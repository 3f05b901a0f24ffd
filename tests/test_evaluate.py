"""Real-bitstream evaluation: load_codec, evaluate, results layout, eval.py, the training callback."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader

from codecx.conf import CONF_DIR
from codecx.config import ConfigError, precheck
from codecx.eval.checkpoint import CheckpointError
from codecx.eval.load import fingerprint_of, load_codec
from codecx.eval.loop import dataset_images, evaluate, summarize
from codecx.eval.results import results_dict
from codecx.eval.code import code_image
from conftest import ROOT, tiny_codec

CONF = CONF_DIR


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("eval", overrides=overrides)


@pytest.fixture(scope="module")
def two_ckpts(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint and a copy with a different synthesis transform (another RD point)."""
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("codec.backbone.g_s") and v.is_floating_point():
            v.mul_(0.5)
    other = tmp_path_factory.mktemp("other") / "other.ckpt"
    torch.save(ckpt, other)
    return tiny_ckpt, other


def test_decoded_file_equals_eval_reconstruction(tiny_ckpt, tiny_images):
    codec, config = load_codec(tiny_ckpt)
    assert not codec.training and config["model"]["N"] == 8 and config["model"]["weights"] is None
    (name, x), = dataset_images(_folder(tiny_images), 1)
    row, x_hat = code_image(codec, x, fingerprint_of(codec, config))
    with torch.no_grad():
        ref = codec(x).x_hat.clamp(0, 1)
    assert torch.equal(x_hat, ref)
    assert row["bpp"] > row["bpp_streams"] > 0  # the header counts in bpp
    assert row["bytes"] * 8 / (64 * 96) == pytest.approx(row["bpp"])
    # a replacement quantizer (same hard rounding) codes the same streams under its own fingerprint
    ste, cfg2 = load_codec(tiny_ckpt, {"_target_": "codecx.quantizers.STEQuantizer"})
    assert type(ste.quantizer).__name__ == "STEQuantizer" and cfg2["quantizer"]["_target_"].endswith("STEQuantizer")
    assert fingerprint_of(ste, cfg2) != fingerprint_of(codec, config)
    assert code_image(ste, x)[0]["bpp_streams"] == row["bpp_streams"]


def _folder(d):
    from codecx.data import ImageFolderDataset

    return ImageFolderDataset(d, crop_size=None, train=False)


def test_load_codec_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_codec(tmp_path / "nope.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_codec(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a codecx training checkpoint.*model.weights"):
        load_codec(tmp_path / "plain.ckpt")


def test_results_layout_one_entry_per_point():
    codec = tiny_codec().eval()
    codec.update(force=True)
    imgs = [("a", torch.rand(1, 3, 64, 64)), ("b", torch.rand(1, 3, 64, 80))]
    rows = evaluate(codec, imgs, bytes(8), progress=False)
    assert [r["image"] for r in rows] == ["a", "b"] and rows[1]["width"] == 80
    p = summarize(rows)
    assert p["images"] == 2 and p["bpp"] == pytest.approx((rows[0]["bpp"] + rows[1]["bpp"]) / 2)
    res = results_dict("x", [p, p], "d")
    assert res["name"] == "x" and res["description"] == "d"
    r = res["results"]
    assert {"bpp", "bpp_est", "bpp_streams", "psnr-rgb", "ms-ssim", "encoding_time",
            "decoding_time"} <= set(r) and all(len(v) == 2 for v in r.values())
    assert r["ms-ssim"] == [None, None]  # 64 px is too small for MS-SSIM: null, not NaN
    json.loads(json.dumps(res, allow_nan=False))


def test_eval_py_two_checkpoints_one_curve(two_ckpts, tiny_images, tmp_path):
    """The real `python eval.py`: results.json (CompressAI layout), per-image CSV, a table; a
    missing FID weights file only warns."""
    out = tmp_path / "eval"
    a, b = two_ckpts
    r = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"ckpt=[{a},{b}]", "data=folder",
         f"data.val_dir={tiny_images}", "name=tiny", "progress=false", "threads=1",
         "metrics.fid.enabled=true", f"metrics.fid.weights={tmp_path}/nope.pth", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FID/KID skipped" in r.stderr and "nope.pth" in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["name"] == "tiny" and res["checkpoints"] == [str(a), str(b)]
    assert {"bpp", "psnr-rgb", "ms-ssim", "bpp_est", "encoding_time", "decoding_time"} <= set(res["results"])
    assert all(len(v) == 2 for v in res["results"].values())
    assert res["results"]["psnr-rgb"][0] != res["results"]["psnr-rgb"][1]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 4 and {r["image"] for r in rows} == {"img0.png", "img1.png"}
    assert "PSNR" in r.stdout and "results.json" in r.stdout


def test_eval_py_lattice_and_shift(tiny_ckpt, tiny_images, tmp_path):
    """`eval.py quantizer=hex shift=latent` on a scalar-trained checkpoint: real files, the chosen
    shift index and the gradient correlation (arXiv 2501.01231 fig. 6) per image."""
    out = tmp_path / "eval"
    r = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"ckpt={tiny_ckpt}", "data=folder", f"data.val_dir={tiny_images}",
         "quantizer=hex", "shift=latent", "progress=false", "threads=1", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2
    from codecx.cli import load_method_codec, read_image
    from codecx.inference.latent_shift import shift_gradient_correlation

    codec, _ = load_method_codec(str(tiny_ckpt), "hex", "latent_shift")
    for row in rows:
        assert 0 <= int(row["shift_index"]) < 8
        want = shift_gradient_correlation(codec, read_image(tiny_images / row["image"]))
        got = float(row["grad_corr"])
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-6)
    res = json.loads((out / "results.json").read_text())
    assert "grad_corr" in res["results"] and len(res["results"]["grad_corr"]) == 1


def test_eval_scale_levels_option(tiny_ckpt):
    """eval.py scale_levels=64: the checkpoint's codec with CompressAI's 64-level CDF tables (its
    own bitstreams); by default the model's 256."""
    from codecx.eval.main import codecs

    for extra, levels in (([], 256), (["scale_levels=64"], 64)):
        (_, codec, config), = list(codecs(_compose([f"ckpt={tiny_ckpt}", *extra])))
        assert codec.backbone.gaussian_conditional.scale_table.numel() == levels
        assert config["model"].get("scale_levels", 256) == levels


def test_eval_config_errors():
    from codecx.eval.main import validate

    with pytest.raises(ConfigError, match="nothing to evaluate: set ckpt=PATH"):
        validate(_compose([]))
    with pytest.raises(ConfigError, match="exclude each other"):
        validate(_compose(["ckpt=a.ckpt", "model=mbt_mean"]))
    with pytest.raises(ConfigError, match="needs data.val_dir"):
        validate(_compose(["ckpt=a.ckpt", "data=folder"]))
    with pytest.raises(ConfigError, match="no such checkpoint file.*nope.ckpt"):
        validate(_compose(["ckpt=[nope.ckpt]"]))
    with pytest.raises(ConfigError, match=r"unknown key 'metrics.lpip'.*lpips, fid"):
        precheck(["ckpt=a.ckpt", "metrics.lpip.enabled=true"], CONF, "eval")
    with pytest.raises(ConfigError, match="Available options in 'quantizer'"):
        precheck(["ckpt=a.ckpt", "quantizer=nope"], CONF, "eval")
    with pytest.raises(ConfigError, match="Available options in 'shift'"):
        precheck(["ckpt=a.ckpt", "shift=nope"], CONF, "eval")
    with pytest.raises(ConfigError, match="unknown key.*shift.latent_shift.rho.*candidates"):
        precheck(["ckpt=a.ckpt", "shift=latent", "+shift.latent_shift.rho=1"], CONF, "eval")
    with pytest.raises(ConfigError, match="unknown key.*transform.latent_shift.rho.*candidates"):
        precheck(["ckpt=a.ckpt", "transform=[latent_shift]", "+transform.latent_shift.rho=1"], CONF, "eval")


def test_compressai_state_dict_path(tmp_path):
    """model=... model.weights=PATH evaluates a CompressAI-layout state dict (no checkpoint)."""
    from codecx.eval.main import codecs

    src = tiny_codec()
    torch.save(src.backbone.state_dict(), tmp_path / "w.pth")
    cfg = _compose(["model=mbt_mean", "model.N=8", "model.M=12", f"model.weights={tmp_path}/w.pth"])
    (label, codec, config), = list(codecs(cfg))
    assert label.endswith("w.pth") and config["quantizer"]["_target_"].endswith("NoiseQuantizer")
    w = "g_a.0.weight"
    assert torch.equal(codec.backbone.state_dict()[w], src.backbone.state_dict()[w])
    row, _ = code_image(codec, torch.rand(1, 3, 64, 64), fingerprint_of(codec, config))
    assert row["bpp"] > 0


# ---------------------------------------------------------------------- training callback
class _FakeWandb(pl.loggers.WandbLogger):
    """A WandbLogger that records instead of starting a W&B run."""

    def __init__(self):
        super().__init__(mode="disabled")
        self.metrics, self.tables, self.images = [], [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data))

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, kwargs))


def test_callback_logs_real_bitstream_metrics():
    from codecx.lit import LitCodec
    from codecx.eval.callback import RealBitstreamEval

    pl.seed_everything(0)
    module = LitCodec(tiny_codec(), lmbda=0.01)
    imgs = list(torch.nn.functional.avg_pool2d(torch.rand(3, 3, 64, 64), 5, 1, 2))
    cb, rec = RealBitstreamEval(every_n_steps=1, max_images=1, anchor="mbt2018-mean"), _FakeWandb()
    modes = []
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=rec, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)

    class Spy(pl.Callback):  # runs after RealBitstreamEval: the module must still be training
        def on_train_batch_end(self, trainer, pl_module, *args):
            modes.append(pl_module.training)

    trainer.callbacks.append(Spy())
    trainer.fit(module, DataLoader(imgs[:2], batch_size=2), DataLoader(imgs[2:], batch_size=1))
    evals = [(s, m) for s, m in rec.metrics if "val/bpp" in m]
    assert [s for s, _ in evals] == [1, 2, 3]  # steps 1, 2 periodic; 3 the final one
    assert {"val/bpp", "val/bpp_est", "val/psnr"} <= set(evals[-1][1])
    assert all(modes) and cb.final is not None and cb.final["images"] == 1
    assert cb.final["bpp"] > cb.final["bpp_est"] > 0 and len(cb.history) == 3
    # W&B extras: the RD points so far, an RD plot and reconstructions (original | decoded)
    key, cols, data = rec.tables[-1]
    assert key == "val/rd_points" and cols[:2] == ["step", "bpp"] and [r[0] for r in data] == [1, 2, 3]
    images = {k: (v, kw) for k, v, kw in rec.images}
    assert set(images) == {"val/rd_plot", "val/reconstructions"}
    recon, kw = images["val/reconstructions"]
    # uint8 panels: original | decoded on top, their central crops enlarged below
    assert recon[0].shape == (128, 128, 3) and recon[0].dtype.name == "uint8"
    assert "original | decoded" in kw["caption"][0]
