"""One-point BD measures against an anchor curve (val/delta_rate, val/delta_psnr) and their
logging by RealBitstreamEval during real training; JPEG / WebP anchors; FID / KID in training."""
from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from codecx.data.datamodule import ImageDataModule
from codecx.eval.loop import dataset_images
from codecx.lit import LitCodec
from codecx.eval.callback import RealBitstreamEval
from codecx.metrics.anchors import classical_anchor, resolve_anchor
from codecx.metrics.bdrate import delta_quality_at, delta_rate_at, point_deltas
from codecx.regularizers import NoRegularizer
from conftest import MemoryLogger, tiny_codec


def log_linear(q_lo=20.0, q_hi=40.0, n=5, r0=0.1, slope=10.0):
    """An anchor whose log10-rate is linear in PSNR: bpp = r0 * 10 ** ((psnr - q_lo) / slope)."""
    q = np.linspace(q_lo, q_hi, n)
    return r0 * 10 ** ((q - q_lo) / slope), q


def test_delta_rate_is_the_analytic_value_on_a_log_linear_anchor():
    r, q = log_linear()
    # anchor rate at 27 dB: 0.1 * 10^0.7; the point spends 0.3 bpp there
    assert delta_rate_at(r, q, 0.3, 27.0) == pytest.approx((0.3 / (0.1 * 10 ** 0.7) - 1) * 100, rel=1e-9)
    # anchor quality at 0.3 bpp: 20 + 10 log10(3) dB
    assert delta_quality_at(r, q, 0.3, 27.0) == pytest.approx(27.0 - (20 + 10 * math.log10(3)), abs=1e-9)
    # on the curve: zero; at the same PSNR with half the rate: -50 %
    assert delta_rate_at(r, q, 0.1 * 10 ** 1.2, 32.0) == pytest.approx(0.0, abs=1e-9)
    assert delta_rate_at(r, q, 0.5 * 0.1 * 10 ** 1.2, 32.0) == pytest.approx(-50.0, abs=1e-9)
    # the order of the anchor's points does not matter
    assert delta_rate_at(r[::-1], q[::-1], 0.3, 27.0) == pytest.approx(delta_rate_at(r, q, 0.3, 27.0))


def test_pchip_between_points_of_a_curved_anchor():
    """Between the anchor's points, the log rate follows the same pchip as `bd` (not a line)."""
    from scipy.interpolate import PchipInterpolator

    q = np.array([22.0, 26.0, 31.0, 37.0])
    r = np.array([0.05, 0.12, 0.4, 1.6])
    expect = 10 ** PchipInterpolator(q, np.log10(r))(28.3)
    assert delta_rate_at(r, q, 0.2, 28.3) == pytest.approx((0.2 / expect - 1) * 100, rel=1e-9)
    # pchip on a 2-point anchor is the line through them in (PSNR, log rate)
    assert delta_rate_at(r[:2], q[:2], 0.1, 24.0) == pytest.approx(
        (0.1 / 10 ** np.interp(24.0, q[:2], np.log10(r[:2])) - 1) * 100, rel=1e-9)


def test_missing_outside_the_anchor_range():
    r, q = log_linear()
    assert math.isnan(delta_rate_at(r, q, 0.3, 19.9))       # below the lowest PSNR
    assert math.isnan(delta_rate_at(r, q, 0.3, 40.1))       # above the highest
    assert math.isnan(delta_quality_at(r, q, 0.09, 25.0))   # below the lowest rate
    assert math.isnan(delta_quality_at(r, q, 10.5, 25.0))   # above the highest
    assert not math.isnan(delta_rate_at(r, q, 0.3, 20.0))   # the end points are inside
    with pytest.raises(ValueError, match="at least 2"):
        delta_rate_at([0.1], [30.0], 0.1, 30.0)


def test_point_deltas_psnr_and_msssim():
    r, q = log_linear()
    # MS-SSIM in dB (-10 log10(1 - x)) also log-linear: x_db = q - 10
    msssim = 1 - 10 ** (-(q - 10) / 10)
    anchor = {"name": "synthetic", "results": {"bpp": r.tolist(), "psnr-rgb": q.tolist(),
                                               "ms-ssim": msssim.tolist()}}
    point = {"bpp": 0.3, "psnr-rgb": 27.0, "ms-ssim": 1 - 10 ** (-(27.0 - 10) / 10)}
    d = point_deltas(anchor, point)
    assert d["delta_rate"] == pytest.approx((0.3 / (0.1 * 10 ** 0.7) - 1) * 100)
    assert d["delta_rate_msssim"] == pytest.approx(d["delta_rate"])
    assert d["delta_psnr"] == pytest.approx(27.0 - (20 + 10 * math.log10(3)))
    assert d["delta_msssim_db"] == pytest.approx(d["delta_psnr"])
    # no MS-SSIM on the point (small images): missing, PSNR deltas still there
    d = point_deltas(anchor, {"bpp": 0.3, "psnr-rgb": 27.0, "ms-ssim": float("nan")})
    assert math.isnan(d["delta_rate_msssim"]) and not math.isnan(d["delta_rate"])


def test_jpeg_anchor_counts_real_file_bytes(tiny_images):
    from PIL import Image

    dm = ImageDataModule(source="folder", train_dir=tiny_images, val_dir=tiny_images)
    dm.setup("validate")
    images = dataset_images(dm.val_set)
    a = classical_anchor(images, "jpeg", qualities=[10, 50, 90])
    res = a["results"]
    x = images[0][1][0]
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    sizes = []
    for _, im in images:
        buf = io.BytesIO()
        Image.fromarray((im[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(
            buf, format="JPEG", quality=50)
        sizes.append(8 * len(buf.getvalue()) / (im.shape[-1] * im.shape[-2]))
    assert res["bpp"][res["quality"].index(50)] == pytest.approx(np.mean(sizes))
    assert np.all(np.diff(res["bpp"]) > 0) and np.all(np.diff(res["psnr-rgb"]) > 0)
    # the full default range on tiny images: settings giving the same file appear once
    full = classical_anchor(images, "jpeg")["results"]
    assert np.all(np.diff(full["bpp"]) > 0) and np.all(np.diff(full["psnr-rgb"]) > 0)
    assert arr.shape[:2] == tuple(images[0][1].shape[-2:])
    w = resolve_anchor("webp", images)
    assert w["name"] == "webp" and len(w["results"]["bpp"]) > 5
    with pytest.raises(FileNotFoundError, match="neither a results JSON"):
        resolve_anchor("no-such-anchor")


# ---------------------------------------------------------------- RealBitstreamEval in training


def _fit(tiny_images, callback, steps=2):
    pl.seed_everything(0)
    dm = ImageDataModule(source="folder", train_dir=tiny_images, val_dir=tiny_images, crop_size=64,
                         batch_size=2)
    logger = MemoryLogger()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[callback])
    trainer.fit(LitCodec(tiny_codec(), NoRegularizer(), lmbda=0.01), datamodule=dm)
    return logger


@pytest.mark.medium  # real Lightning training
def test_training_logs_delta_rate_against_a_results_json(tiny_images, tmp_path):
    """val/delta_rate, val/delta_psnr at every real-bitstream evaluation equal the analytic values
    at the logged (val/bpp, val/psnr) on a log-linear anchor wide enough to hold any point."""
    r, q = log_linear(q_lo=0.0, q_hi=80.0, n=9, r0=1e-3, slope=10.0)
    path = tmp_path / "anchor.json"
    path.write_text(json.dumps({"name": "wide", "results": {"bpp": r.tolist(), "psnr-rgb": q.tolist()}}))
    logger = _fit(tiny_images, RealBitstreamEval(every_n_steps=1, max_images=1, anchor=str(path)))
    bpp, psnr = dict(logger.values("val/bpp")), dict(logger.values("val/psnr"))
    rates, psnrs = dict(logger.values("val/delta_rate")), dict(logger.values("val/delta_psnr"))
    assert sorted(rates) == sorted(bpp) == [1, 2]  # step 1 (periodic) and 2 (final)
    for s in rates:
        anchor_rate = 1e-3 * 10 ** (psnr[s] / 10)
        assert rates[s] == pytest.approx((bpp[s] / anchor_rate - 1) * 100, rel=1e-6)
        assert psnrs[s] == pytest.approx(psnr[s] - 10 * math.log10(bpp[s] / 1e-3), abs=1e-6)
    assert not logger.values("val/delta_rate_msssim")  # 64-px images have no MS-SSIM


@pytest.mark.medium  # real Lightning training
def test_training_outside_the_anchor_range_logs_nothing_and_warns_once(tiny_images, tmp_path):
    """Outside the anchor's range val/delta_* are not logged (one warning); FID / KID without
    the Inception file likewise: training goes on."""
    r, q = log_linear(q_lo=70.0, q_hi=90.0)  # no 2-step codec reaches 70 dB
    path = tmp_path / "anchor.json"
    path.write_text(json.dumps({"name": "high", "results": {"bpp": r.tolist(), "psnr-rgb": q.tolist()}}))
    cb = RealBitstreamEval(every_n_steps=1, max_images=1, anchor=str(path),
                           fid_weights=str(tmp_path / "none.pth"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = _fit(tiny_images, cb)
    assert len(logger.values("val/psnr")) == 2 and not logger.values("val/delta_rate")
    assert not logger.values("val/fid")
    msgs = [str(w.message) for w in caught if "val/delta_rate:" in str(w.message)]
    assert len(msgs) == 1 and "outside anchor" in msgs[0] and "70.00-90.00" in msgs[0]
    msgs = [str(w.message) for w in caught if "val/fid" in str(w.message)]
    assert len(msgs) == 1 and "none.pth" in msgs[0]


@pytest.mark.medium  # real Lightning training
def test_training_with_the_jpeg_anchor(tiny_images):
    """eval.anchor=jpeg: the JPEG curve of the validation images, computed once; the logged
    deltas are those of the point against it (or missing outside its range)."""
    cb = RealBitstreamEval(every_n_steps=0, anchor="jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = _fit(tiny_images, cb)
    assert len(cb._anchors) == 1
    anchor = next(iter(cb._anchors.values()))
    dm = ImageDataModule(source="folder", train_dir=tiny_images, val_dir=tiny_images)
    dm.setup("validate")
    assert anchor == classical_anchor(dataset_images(dm.val_set), "jpeg")
    expect = point_deltas(anchor, cb.final)
    for key in ("delta_rate", "delta_psnr"):
        got = logger.values(f"val/{key}")
        assert (got[0][1] == pytest.approx(expect[key])) if got else math.isnan(expect[key])


def test_unknown_anchor_is_a_config_error():
    from codecx.config import ConfigError

    with pytest.raises(ConfigError, match="eval.anchor.*mbt2018-mean"):
        RealBitstreamEval(anchor="mbt2018-meen")


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A weights file of torch-fidelity's InceptionV3 architecture with random weights (the real
    file cannot be downloaded here): the metric runs end to end, the values are not FID's."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    d = tmp_path_factory.mktemp("inception")
    empty = d / "empty.pth"
    torch.save({}, empty)
    load = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = load
    path = d / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow  # InceptionV3 on CPU
def test_fid_kid_logged_with_weights(tiny_images, inception_file):
    cb = RealBitstreamEval(every_n_steps=0, fid_weights=str(inception_file), fid_patch=64)  # 1 patch per 64x96 image
    logger = _fit(tiny_images, cb, steps=1)
    fid, kid = logger.values("val/fid"), logger.values("val/kid")
    assert len(fid) == 1 and len(kid) == 1
    assert math.isfinite(fid[0][1]) and fid[0][1] > 0 and math.isfinite(kid[0][1])


def test_classical_at_matches_jpeg_at_the_codec_bpp(tiny_images):
    """JPEG at a given mean bpp: on one of the sweep's own points it is that quality's PSNR;
    between two points it is the log-bpp interpolation; outside the reachable rates no PSNR,
    the side and JPEG's lowest point."""
    from codecx.metrics.anchors import classical_at

    dm = ImageDataModule(source="folder", train_dir=tiny_images, val_dir=tiny_images)
    dm.setup("validate")
    images = dataset_images(dm.val_set)
    curve = classical_anchor(images, "jpeg", qualities=range(1, 101), msssim=False)["results"]
    i = len(curve["bpp"]) // 2
    at = classical_at(images, curve["bpp"][i], "jpeg")
    assert at["psnr"] == pytest.approx(curve["psnr-rgb"][i]) and curve["quality"][i] in at["quality"]
    mid = math.sqrt(curve["bpp"][i] * curve["bpp"][i + 1])  # halfway in log bpp
    assert classical_at(images, mid, "jpeg")["psnr"] == pytest.approx(
        (curve["psnr-rgb"][i] + curve["psnr-rgb"][i + 1]) / 2)
    below = classical_at(images, curve["bpp"][0] / 2, "jpeg")
    assert below["psnr"] is None and below["below"] and below["lowest"] == (curve["bpp"][0], curve["psnr-rgb"][0])
    above = classical_at(images, curve["bpp"][-1] * 2, "jpeg")
    assert above["psnr"] is None and not above["below"]
