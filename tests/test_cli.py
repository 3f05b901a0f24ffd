"""The `codecx` command line: compress/decompress, bdrate, plot and the sweep report."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codecx.cli import main, read_image
from codecx.eval.load import load_codec
from codecx.metrics.anchors import load_anchor
from codecx.metrics.rd import to_uint8
from conftest import TINY, run_train

CODECX = Path(sys.executable).with_name("codecx")


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """`codecx` verbs set torch's thread count; give the other test modules theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def coded(tiny_ckpt, tiny_images, tmp_path_factory):
    """(image path, codecx file, decoded PNG) of one real 64x96 image."""
    d = tmp_path_factory.mktemp("coded")
    img, f, png = tiny_images / "img0.png", d / "img0.cdcx", d / "img0.png"
    assert main(["compress", str(img), "-c", str(tiny_ckpt), "-o", str(f), "--threads", "1"]) == 0
    assert main(["decompress", str(f), "-c", str(tiny_ckpt), "-o", str(png), "--threads", "1"]) == 0
    return img, f, png


def test_compress_decompress_round_trip(coded, tiny_ckpt, capsys):
    img, f, png = coded
    data = f.read_bytes()
    assert data[:4] == b"CDCX"
    codec, _ = load_codec(tiny_ckpt)
    x = read_image(img)
    with torch.no_grad():
        ref = to_uint8(codec(x).x_hat)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    dec = np.asarray(Image.open(png))
    assert dec.shape == (64, 96, 3) and np.array_equal(dec, ref)


def test_lattice_and_shift_named_in_the_header(tiny_ckpt, tiny_images, tmp_path, capsys):
    """--quantizer/--transform at the encoder; the decoder rebuilds them from the header by itself
    and reproduces the eval-mode reconstruction; --shift latent (the preset that is transform
    latent_shift, as files before issue 30 name it) codes the same streams and decodes the same;
    a wrong override fails on the fingerprint."""
    from codecx.cli import load_method_codec
    from codecx.coding.container import unpack

    img, f, png = tiny_images / "img0.png", tmp_path / "a.cdcx", tmp_path / "a.png"
    assert main(["compress", str(img), "-c", str(tiny_ckpt), "-o", str(f), "--quantizer", "hex",
                 "--transform", "latent_shift"]) == 0
    header, streams = unpack(f.read_bytes())
    assert header.options["quantizer"] == "hex" and header.options["transform"] == "latent_shift"
    assert 0 <= header.options["shift_index"] < 8
    assert main(["decompress", str(f), "-c", str(tiny_ckpt), "-o", str(png)]) == 0
    codec, _ = load_method_codec(str(tiny_ckpt), "hex", "latent_shift")
    with torch.no_grad():
        ref = to_uint8(codec(read_image(img)).x_hat)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(png)), ref)
    old = tmp_path / "old.cdcx"
    assert main(["compress", str(img), "-c", str(tiny_ckpt), "-o", str(old), "--quantizer", "hex",
                 "--shift", "latent"]) == 0
    old_header, old_streams = unpack(old.read_bytes())
    assert old_header.options["shift"] == "latent" and "transform" not in old_header.options
    assert old_streams == streams and old_header.fingerprint == header.fingerprint
    assert main(["decompress", str(old), "-c", str(tiny_ckpt), "-o", str(tmp_path / "old.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "old.png")), ref)
    capsys.readouterr()
    assert main(["decompress", str(f), "-c", str(tiny_ckpt), "-o", str(tmp_path / "b.png"),
                 "--quantizer", "oct"]) == 1
    assert "different model/configuration" in capsys.readouterr().err
    assert main(["compress", str(img), "-c", str(tiny_ckpt), "--quantizer", "hexx"]) == 1
    err = capsys.readouterr().err
    assert "quantizer/hexx" in err and "oct" in err and "Traceback" not in err


def test_compress_prints_bytes_and_bpp(tiny_ckpt, tiny_images, tmp_path, capsys):
    out = tmp_path / "a.cdcx"
    assert main(["compress", str(tiny_images / "img1.png"), "-c", str(tiny_ckpt), "-o", str(out)]) == 0
    n = out.stat().st_size
    assert f"{n} bytes, {n * 8 / (64 * 96):.4f} bpp" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "flip", "not_codecx", "empty"])
def test_bad_files_fail_cleanly(coded, tiny_ckpt, tmp_path, capsys, damage):
    data = bytearray(coded[1].read_bytes())
    bad = {"truncate": data[: len(data) // 2], "flip": data[:20] + bytes([data[20] ^ 0x10]) + data[21:],
           "not_codecx": b"\x89PNG\r\n\x1a\n" + bytes(50), "empty": b""}[damage]
    f = tmp_path / "bad.cdcx"
    f.write_bytes(bytes(bad))
    assert main(["decompress", str(f), "-c", str(tiny_ckpt), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("codecx decompress: error: ") and "Traceback" not in err
    assert re.search(r"truncated|CRC32|not a codecx file", err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.medium  # runs the installed codecx script (a subprocess)
def test_corrupted_file_with_the_real_script(coded, tiny_ckpt, tmp_path):
    """The installed `codecx` script: exit code 1, one clear line, no traceback."""
    if not CODECX.is_file():
        pytest.skip("the codecx script is not installed (pip install -e .)")
    data = bytearray(coded[1].read_bytes())
    data[-10] ^= 0xFF
    f = tmp_path / "bad.cdcx"
    f.write_bytes(bytes(data))
    r = subprocess.run([str(CODECX), "decompress", str(f), "-c", str(tiny_ckpt), "-o", str(tmp_path / "o.png")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "codecx decompress: error: corrupted codecx file: CRC32 mismatch" in r.stderr


def test_bad_inputs(coded, tiny_ckpt, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    assert main(["compress", str(tmp_path / "x.png"), "-c", str(tiny_ckpt)]) == 1
    assert "not a readable image" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "none.png"), "-c", str(tiny_ckpt)]) == 1
    assert "no such image file" in capsys.readouterr().err
    assert main(["decompress", str(tmp_path / "x.png"), "-c", str(tiny_ckpt)]) == 1
    assert "not a codecx file" in capsys.readouterr().err
    assert main(["decompress", str(coded[1]), "-c", str(tmp_path / "none.ckpt")]) == 1
    err = capsys.readouterr().err
    assert "checkpoint" in err and "none.ckpt" in err


def test_bdrate_on_packaged_anchors(capsys):
    assert main(["bdrate", "bmshj2018-hyperprior", "mbt2018-mean"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"pchip\s+BD-rate -6\.83 %", out) and re.search(r"cubic\s+BD-rate -6\.77 %", out)
    assert main(["bdrate", "bmshj2018-hyperprior", "nope"]) == 1
    assert "available anchors" in capsys.readouterr().err


def test_plot(tmp_path, capsys):
    anchor = load_anchor("bmshj2018-hyperprior")
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "mine", "results": anchor["results"]}))
    assert main(["plot", str(f), "-o", str(tmp_path / "rd.png"), "--anchor", "mbt2018-mean"]) == 0
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------- report
def _fake_run(root: Path, name: str, overrides, bpp, psnr, images=None):
    """A run folder as Hydra writes it, with a results.json (no checkpoint needed) and, given
    `images` ({image: (bpp, psnr)}), its per_image.csv."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "results.json").write_text(json.dumps(
        {"name": name, "results": {"bpp": [bpp], "psnr-rgb": [psnr], "ms-ssim": [None]}}))
    if images:
        (d / "per_image.csv").write_text("image,bpp,psnr-rgb\n" + "".join(
            f"{im},{b},{p}\n" for im, (b, p) in images.items()))


def test_report_bd_rate_against_baseline(tmp_path, capsys):
    """Groups by every override but lmbda; BD-rate of the published curves (both methods)."""
    root = tmp_path / "sweep"
    for group, anchor in (("none", "bmshj2018-hyperprior"), ("cse", "mbt2018-mean")):
        r = load_anchor(anchor)["results"]
        for i, (b, p) in enumerate(zip(r["bpp"], r["psnr-rgb"])):
            _fake_run(root, f"{group}{i}", [f"reg={group}", f"lmbda={i}", "trainer.max_steps=9"], b, p)
    assert main(["report", str(root), "--baseline", "reg=none"]) == 0
    md = (root / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| reg=cse"))
    assert "-6.83" in row and "-6.77" in row  # pchip and cubic, as `codecx bdrate`
    assert "| reg=none (baseline)" in md and (root / "rd.png").is_file()
    rows = list(csv.DictReader(open(root / "report.csv")))
    assert [r["group"] for r in rows] == ["reg=none (baseline)", "reg=cse"]
    assert float(rows[1]["bd_rate_pchip"]) == pytest.approx(-6.83, abs=0.01)
    assert main(["report", str(root), "--baseline", "reg=gan"]) == 1
    assert "no groups match" in capsys.readouterr().err


def test_report_with_seed_replicates(tmp_path, capsys):
    """--replicates seed: each group's BD-rate is the mean over seeds, each seed against the
    baseline's same seed; the baseline row is the seed-to-seed noise band."""
    from codecx.metrics.bdrate import bd_methods

    root = tmp_path / "sweep"
    hyper, mbt = load_anchor("bmshj2018-hyperprior"), load_anchor("mbt2018-mean")
    lifted = {"results": {"bpp": hyper["results"]["bpp"],
                          "psnr-rgb": [p + 0.05 for p in hyper["results"]["psnr-rgb"]]}}
    curves = {("none", 1): hyper, ("none", 2): lifted, ("cse", 1): mbt, ("cse", 2): mbt}
    for (group, seed), c in curves.items():
        for i, (b, p) in enumerate(zip(c["results"]["bpp"], c["results"]["psnr-rgb"])):
            _fake_run(root, f"{group}{seed}_{i}", [f"reg={group}", f"seed={seed}", f"lmbda={i}"], b, p)
    assert main(["report", str(root), "--baseline", "reg=none", "--replicates", "seed"]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(root / "report.csv"))}
    assert set(rows) == {"reg=none (baseline)", "reg=cse"} and rows["reg=cse"]["runs"] == "16"
    bd = lambda a, t: bd_methods(a, t, "psnr-rgb", "pchip")[0]["pchip"].bd_rate  # noqa: E731
    want = (bd(hyper, mbt) + bd(lifted, mbt)) / 2
    assert float(rows["reg=cse"]["bd_rate_pchip"]) == pytest.approx(want, abs=0.006)
    assert rows["reg=cse"]["bd_rate_pchip_each"] == f"seed=1: {bd(hyper, mbt):+.2f}; seed=2: {bd(lifted, mbt):+.2f}"
    noise = float(rows["reg=none (baseline)"]["bd_rate_pchip"])
    assert noise == pytest.approx(bd(hyper, lifted), abs=0.006) and noise < 0  # +0.05 dB: fewer bits
    assert "seed=2 vs 1" in rows["reg=none (baseline)"]["bd_rate_pchip_each"]
    md = (root / "report.md").read_text()
    assert "Replicates: `seed`" in md and "| reg=cse, seed=2 |" in md


def test_report_bd_rate_per_image(tmp_path):
    """The per-image column: each image's own curve over the lambdas against the baseline's on
    that image (image a 10% cheaper, b 20%: -15, SE 5, band t_{0.975,1} SE); with seeds, pooled
    over the pairs (4 values: t_{0.975,3} SE)."""
    scale = {"none": {"a": 1.0, "b": 1.0}, "cse": {"a": 0.9, "b": 0.8}}
    for root, seeds in ((tmp_path / "one", (1,)), (tmp_path / "sweep", (1, 2))):
        for group in scale:
            for seed in seeds:
                for i, (b, p) in enumerate(zip([0.1, 0.2, 0.4, 0.8], [26.0, 28.0, 30.0, 32.0])):
                    _fake_run(root, f"{group}{seed}_{i}", [f"reg={group}", f"seed={seed}", f"lmbda={i}"], b, p,
                              images={im: (b * k, p) for im, k in scale[group].items()})
    assert main(["report", str(tmp_path / "one"), "--baseline", "reg=none"]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "one" / "report.csv"))}
    assert rows["reg=cse"]["image_bd_rate"] == "-15.00 ± 63.53 (2 images)"
    assert main(["report", str(root), "--baseline", "reg=none", "--replicates", "seed"]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(root / "report.csv"))}
    assert rows["reg=cse"]["image_bd_rate"] == "-15.00 ± 9.19 (4 image-pairs)"  # 2 seeds x 2 images
    assert rows["reg=none (baseline)"]["image_bd_rate"] == "+0.00 ± 0.00 (2 images)"  # seed 2 vs 1
    assert "BD-rate per image" in (root / "report.md").read_text()


@pytest.mark.medium  # runs `train.py -m` (a subprocess)
def test_report_on_a_real_multirun(tmp_path, tiny_images, capsys):
    """train.py -m over 2 quantizers x 2 lambdas, then `codecx report` evaluates every run
    (10-50 s on 2 shared cores)."""
    sweep = tmp_path / "sweep"
    r = run_train(["-m", *TINY, "trainer.max_steps=2", "quantizer=noise,ste", "lmbda=0.0018,0.0067",
                   f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress"]) == 0
    md = (sweep / "report.md").read_text()
    assert re.search(r"^\| quantizer=ste \| 2 \| 0\.0018 0\.0067 \|", md, re.M)
    assert "| quantizer=noise (baseline) | 2 |" in md and (sweep / "rd.png").is_file()
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 4 and all(json.loads(p.read_text())["data"]["max_val_images"] == 1 for p in runs)
    # a second report reuses each run's results.json
    before = [p.stat().st_mtime_ns for p in runs]
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress"]) == 0
    assert [p.stat().st_mtime_ns for p in runs] == before
    # results of other images (--data-val-dir) are never taken for the runs' own, or back
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress",
                 "--data-val-dir", str(tiny_images)]) == 0
    assert all(json.loads(p.read_text())["data"]["val_dir"] == str(tiny_images) for p in runs)
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress"]) == 0
    assert all(json.loads(p.read_text())["data"]["max_val_images"] == 1 for p in runs)
    # --decompose re-evaluates results without the decomposition, then reuses them
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress", "--decompose"]) == 0
    res = [json.loads(p.read_text())["results"] for p in runs]
    assert all(r["mse_a_ratio"][0] > 0 and r["mse_q_ratio"][0] > 0 for r in res)
    assert (sweep / "decomposition.png").is_file() and "MSE_a" in (sweep / "report.md").read_text()
    before = [p.stat().st_mtime_ns for p in runs]
    assert main(["report", str(sweep), "--baseline", "quantizer=noise", "--no-progress", "--decompose"]) == 0
    assert [p.stat().st_mtime_ns for p in runs] == before


def test_report_evaluates_lpips_with_a_local_weights_file(tiny_ckpt, tiny_images, tmp_path, monkeypatch, capsys):
    """`codecx report --lpips-weights FILE`: LPIPS of every run on the evaluation images (in its
    results.json and the runs table); stored results without LPIPS are evaluated again, and a
    missing file is one error naming the flag (nothing is downloaded)."""
    import shutil

    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    torch.manual_seed(0)
    alex = tmp_path / "alexnet-owt-7be5be79.pth"  # random weights standing in for the ImageNet file
    torch.save({k: v for k, v in tvm.alexnet().state_dict().items() if k.startswith("features.")}, alex)
    run = tmp_path / "sweep" / "lmbda=0.01"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- lmbda=0.01\n")
    (run / "checkpoints").mkdir()
    shutil.copy(tiny_ckpt, run / "checkpoints" / "last.ckpt")
    args = ["report", str(run.parent), "--baseline", "lmbda=0.01", "--data-val-dir", str(tiny_images),
            "--no-progress", "--threads", "1"]
    assert main(args) == 0
    assert "lpips" not in json.loads((run / "results.json").read_text())["results"]
    assert main([*args, "--lpips-weights", str(alex)]) == 0
    lpips = json.loads((run / "results.json").read_text())["results"]["lpips"][0]
    assert 0 < lpips < 1.5
    assert "LPIPS" in (run.parent / "report.md").read_text()
    capsys.readouterr()
    assert main([*args, "--lpips-weights", str(tmp_path / "missing.pth")]) == 1
    err = capsys.readouterr().err
    assert "--lpips-weights=" in err and "No download is attempted" in err
