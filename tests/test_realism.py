"""The weight-free realism diagnostic `hf_ratio` (codecx.metrics.realism.hf_power_ratio) and the
evaluation of generative codecs (MS-ILLM / HiFiC, issue 11 item 8): FID/KID samples, results.json,
eval.py's table, `codecx report` and the periodic validation (val/hf_ratio, val/lpips)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from codecx.conf import CONF_DIR
from codecx.metrics.realism import hf_power_ratio
from conftest import ROOT, MemoryLogger, tiny_codec

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 64


def texture(seed: int = 0) -> torch.Tensor:
    """A (1,3,64,64) 8-bit image with detail at every scale: smoothed noise plus edges."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(1, 3, H, W, generator=g), 3, 1, 1, count_include_pad=False)
    x = 0.6 * x + 0.3 * (torch.arange(W) % 16 < 8).float()  # vertical bars: sharp edges
    return (x.clamp(0, 1) * 255).round() / 255


def cosines(*parts) -> torch.Tensor:
    """0.5 + sum of a * cos(2 pi (kx x + ky y) / 64) over (a, kx, ky), the same on R, G, B."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                          indexing="ij")
    img = 0.5 + sum(a * torch.cos(2 * math.pi * (kx * x + ky * y) / W) for a, kx, ky in parts)
    return img.expand(1, 3, H, W).float().clone()


# ---------------------------------------------------------------------- the metric
def test_identity_is_exactly_one():
    x = torch.cat([texture(0), texture(1), torch.rand(1, 3, H, W)])
    assert hf_power_ratio(x, x).tolist() == [1.0, 1.0, 1.0]
    g = x[:, :1]  # one channel: used as is
    assert hf_power_ratio(g, g).tolist() == [1.0, 1.0, 1.0]


def test_blur_lowers_it_and_white_noise_raises_it():
    x = texture()
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)  # 3x3 box blur
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert hf_power_ratio(x, blur).item() < 0.5
    assert hf_power_ratio(x, noisy).item() > 1.2
    stronger = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)  # more blur, less power
    assert hf_power_ratio(x, stronger).item() < hf_power_ratio(x, blur).item()


@pytest.mark.parametrize("w", [64, 63])  # even width: the Nyquist column is its own mirror
def test_real_fft_band_power_equals_the_full_spectrum(w):
    """The half spectrum (rfft2, mirrored columns weighted 2) sums to the full fft2's band power."""
    from codecx.metrics.realism import _band_power

    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 1, 48, w, generator=g, dtype=torch.float64)
    for cutoff in (0.3, 0.5, 1.2):
        c = img - img.mean(dim=(-2, -1), keepdim=True)
        win = torch.hann_window(48, periodic=False, dtype=c.dtype)[:, None] * \
            torch.hann_window(w, periodic=False, dtype=c.dtype)[None, :]
        power = torch.fft.fft2(c * win).abs().pow(2)
        fy, fx = torch.fft.fftfreq(48, dtype=c.dtype)[:, None], torch.fft.fftfreq(w, dtype=c.dtype)[None, :]
        full = (power * (torch.sqrt(fx * fx + fy * fy) / 0.5 > cutoff)).sum(dim=(-3, -2, -1))
        assert torch.allclose(_band_power(img, cutoff), full, rtol=1e-12, atol=0)


def test_known_values_on_sinusoids():
    """Above the cut-off (0.5 x Nyquist = 16 cycles per 64 px) power scales with the amplitude
    squared; below it nothing counts; the cut-off is radial (a diagonal wave at 13 cycles per axis,
    0.41 x Nyquist along each axis and 0.57 x Nyquist radially, is above it)."""
    x = cosines((0.2, 4, 0), (0.1, 24, 0))  # 4 cycles (below), 24 cycles (above)
    assert hf_power_ratio(x, cosines((0.2, 4, 0), (0.05, 24, 0))).item() == pytest.approx(0.25, abs=1e-4)
    assert hf_power_ratio(x, cosines((0.4, 4, 0), (0.1, 24, 0))).item() == pytest.approx(1.0, abs=1e-4)
    assert hf_power_ratio(x, cosines((0.2, 4, 0))).item() < 1e-5
    d = cosines((0.2, 2, 0), (0.1, 13, 13))
    assert hf_power_ratio(d, cosines((0.2, 2, 0), (0.2, 13, 13))).item() == pytest.approx(4.0, abs=1e-3)
    # a wave at 12 cycles (0.375 x Nyquist) halved: outside the band at cutoff 0.5, inside at 0.25
    x = cosines((0.2, 2, 0), (0.1, 12, 0), (0.1, 24, 0))
    x_hat = cosines((0.2, 2, 0), (0.05, 12, 0), (0.1, 24, 0))
    assert hf_power_ratio(x, x_hat).item() == pytest.approx(1.0, abs=1e-4)
    assert hf_power_ratio(x, x_hat, cutoff=0.25).item() == pytest.approx((0.25 + 1) / 2, abs=1e-4)


def test_undefined_and_bad_input():
    flat = torch.full((1, 3, H, W), 0.5)
    assert math.isnan(hf_power_ratio(flat, texture()).item())  # no reference power: NaN, not 1e12
    with pytest.raises(ValueError, match="shapes"):
        hf_power_ratio(texture(), texture()[..., :32])
    for cutoff in (0, 1.5):
        with pytest.raises(ValueError, match="cutoff"):
            hf_power_ratio(texture(), texture(), cutoff=cutoff)


# ---------------------------------------------------------------------- FID / KID samples
class Shapes:
    """A feature extractor that records the shapes it sees (features: channel means)."""

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append(tuple(x.shape))
        return x.float().mean((2, 3))


@pytest.mark.parametrize("h, w, samples", [
    (384, 512, 3),   # grid 1x2, half-shifted grid 1x1 (both sides >= 384)
    (383, 512, 2),   # one side below 384: the grid only
    (512, 300, 2),   # grid 2x1; the shifted grid needs both sides >= 384
    (256, 256, 1),
    (200, 300, 1),   # a side below 256: the whole image is one sample
])
def test_fid_samples_256px_grid_shifted_grid_or_whole_image(h, w, samples):
    from codecx.metrics.fid import FIDKID

    ext = Shapes()
    m = FIDKID(feature_extractor=ext, patch=256)
    m.update(torch.rand(3, h, w), torch.rand(3, h, w))
    assert len(m.real[0]) == len(m.fake[0]) == samples
    size = (h, w) if min(h, w) < 256 else (256, 256)
    assert {s[-2:] for s in ext.seen} == {size}


# ---------------------------------------------------------------------- evaluation and report
def test_evaluate_rows_results_and_table():
    from rich.console import Console

    from codecx.eval.load import prepare
    from codecx.eval.loop import evaluate, summarize
    from codecx.eval.results import results_dict, summary_table
    from codecx.eval.code import NO_FINGERPRINT
    from codecx.metrics.rd import to_uint8

    torch.manual_seed(0)
    codec = prepare(tiny_codec())
    images = [(f"t{i}", texture(i)) for i in range(2)]
    seen = {}
    rows = evaluate(codec, images, NO_FINGERPRINT, progress=False,
                    on_image=lambda n, x, x_hat: seen.setdefault(n, (x, x_hat)))
    for r in rows:  # per image, on the 8-bit decoded image (as PSNR)
        x, x_hat = seen[r["image"]]
        assert r["hf_ratio"] == pytest.approx(hf_power_ratio(x, to_uint8(x_hat) / 255).item(), rel=1e-6)
        assert 0 < r["hf_ratio"] and math.isfinite(r["hf_ratio"])
    point = summarize(rows)
    assert point["hf_ratio"] == pytest.approx(sum(r["hf_ratio"] for r in rows) / 2)
    res = results_dict("tiny", [point])
    assert res["results"]["hf_ratio"] == [pytest.approx(point["hf_ratio"])]
    console = Console(width=250, record=True)
    console.print(summary_table(res))
    assert "HF ratio" in console.export_text()


@pytest.mark.medium  # a real train.py run (session fixture) and a real eval.py run
def test_eval_py_results_json_and_table(tiny_ckpt, tiny_images, tmp_path):
    """A tiny `python eval.py` run: hf_ratio per image in per_image.csv, their mean in
    results.json, a column of the printed table."""
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={tiny_ckpt}", "data=folder",
                        f"data.val_dir={tiny_images}", "progress=false", "threads=1", f"hydra.run.dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    per_image = [float(row["hf_ratio"]) for row in rows]
    assert len(per_image) == 2 and all(v > 0 for v in per_image)
    res = json.loads((out / "results.json").read_text())
    assert res["results"]["hf_ratio"] == [pytest.approx(sum(per_image) / 2, rel=1e-6)]
    assert "HF ratio" in r.stdout


def _run(root, name, bpp, psnr, hf=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    lmbda = name.split("lmbda=")[1]
    (d / ".hydra" / "overrides.yaml").write_text(f"- {name.split(',')[0]}\n- lmbda={lmbda}\n")
    results = {"bpp": [bpp], "psnr-rgb": [psnr], "bpp_est": [bpp], "ms-ssim": [None]}
    if hf is not None:
        results["hf_ratio"] = [hf]
    (d / "results.json").write_text(json.dumps({"name": name, "results": results, "images": [1]}))


def test_report_shows_hf_ratio(tmp_path):
    from codecx.eval.report import build_report

    sweep = tmp_path / "sweep"
    _run(sweep, "reg=none,lmbda=0.01", 0.2, 28.0, 0.61)
    _run(sweep, "reg=none,lmbda=0.02", 0.4, 30.0, 0.72)
    _run(sweep, "reg=cse,lmbda=0.01", 0.21, 28.1, 0.65)
    _run(sweep, "reg=cse,lmbda=0.02", 0.41, 30.2)  # a results.json from before the metric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = build_report(sweep, "reg=none", progress=False)
    md = paths["md"].read_text()
    runs = md.split("## Runs")[1]
    assert "| HF ratio |" in runs and "| 0.610 |" in runs and "| 0.720 |" in runs and "| n/a |" in runs
    assert "HF ratio: power of the decoded images above half the Nyquist" in md
    groups = {r["group"]: r for r in csv.DictReader(paths["csv"].open())}
    assert groups["reg=none (baseline)"]["hf_ratio"] == "0.610-0.720"
    assert groups["reg=cse"]["hf_ratio"] == ""  # not every run of the group has it


# ---------------------------------------------------------------------- periodic validation


def _fit(callback):
    from codecx.lit import LitCodec

    pl.seed_everything(0)
    imgs = [texture(i)[0] for i in range(3)]
    logger = MemoryLogger()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=logger, callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(LitCodec(tiny_codec(), lmbda=0.01), DataLoader(imgs[:2], batch_size=2),
                DataLoader(imgs[2:], batch_size=1))
    return [(s, m) for s, m in logger.rows if "val/bpp" in m]


def test_periodic_validation_logs_hf_ratio_and_lpips(tmp_path, monkeypatch):
    """val/hf_ratio at every real-bitstream evaluation, without any weights; val/lpips with
    eval.lpips_weights (a random-init AlexNet file standing in for torchvision's); a missing
    LPIPS file is one warning and training goes on. The key is in the train config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from torchvision import models as tvm

    from codecx.config import register_configs
    from codecx.eval.callback import RealBitstreamEval

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no hub cache to fall back on
    torch.manual_seed(0)
    alex = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({k: v for k, v in tvm.alexnet().state_dict().items() if k.startswith("features.")}, alex)
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"eval.lpips_weights={alex}", "eval.every_n_steps=1",
                                          "eval.max_images=1"])
    GlobalHydra.instance().clear()
    evals = _fit(RealBitstreamEval(**OmegaConf.to_container(cfg.eval, resolve=True)))
    assert [s for s, _ in evals] == [1, 2]
    for _, m in evals:
        assert 0 < m["val/hf_ratio"] < 10 and 0 < m["val/lpips"] < 2
    with pytest.warns(UserWarning, match="val/lpips not logged.*nope.pth"):
        evals = _fit(RealBitstreamEval(every_n_steps=1, max_images=1, lpips_weights=str(tmp_path / "nope.pth")))
    assert [s for s, _ in evals] == [1, 2]
    assert all("val/hf_ratio" in m and "val/lpips" not in m for _, m in evals)
