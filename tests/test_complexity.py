"""KMACs per pixel (Yang & Mandt 2023's complexity axis): the paper's figures, every backbone,
the `codecx complexity` verb, results.json columns and the report's RD-complexity plot."""
from __future__ import annotations

import json

import pytest

from codecx.cli import main
from codecx.eval.results import results_dict, summary_table
from codecx.metrics.complexity import (build_model, kmacs_per_pixel, matched_rate_points,
                                       parameter_counts, plot_rdc)
from codecx.models.backbones import BmshjFactorized, Mbt, MbtMean
from codecx.models.shallow import JpegLike, Shallow


def test_two_layer_synthesis_kmacs_pinned():
    """C=320, 12 hidden: 5.331 KMACs/px and 1,299,003 parameters (arXiv 2304.06244; the docs' 5.33)."""
    bb = Shallow(N=8, M=320, analysis="cnn")
    k = kmacs_per_pixel(bb, 128, 128)
    # conv1 + conv_res: 2 * 320*12*13^2 / 16^2, conv2: 12*3*5^2 / 2^2, IGDN1: 12^2 / 2^2
    assert k["g_s"] == pytest.approx((2 * 320 * 12 * 169 / 256 + 12 * 3 * 25 / 4 + 144 / 4) / 1e3)
    assert k["g_s"] == pytest.approx(5.33, abs=0.01)
    assert parameter_counts(bb)["g_s"] == 1_299_003
    # no residual, 24 hidden channels; JPEG-like: one ConvT C->3, k18, s16 (~1.2)
    k24 = kmacs_per_pixel(Shallow(N=8, M=320, analysis="cnn", residual=False), 64, 64)["g_s"]
    assert k24 == pytest.approx((320 * 24 * 169 / 256 + 24 * 3 * 25 / 4 + 24 * 24 / 4) / 1e3)
    assert kmacs_per_pixel(JpegLike(N=8, M=320, analysis="cnn"), 64, 64)["g_s"] == pytest.approx(1.215)


def test_minnen_synthesis_and_hyper_synthesis():
    """Minnen 2018 synthesis ~93.8 and the mean-scale hyper synthesis ~15 KMACs/px (N=192, M=320)."""
    k = kmacs_per_pixel(MbtMean(N=192, M=320), 64, 64)
    assert k["g_s"] == pytest.approx(93.7, abs=0.2)
    assert k["h_s"] == pytest.approx(14.9, abs=0.4)
    assert k["context"] == 0 and k["decoder"] == pytest.approx(k["h_s"] + k["g_s"])


def test_factorized_and_context_models():
    f = kmacs_per_pixel(BmshjFactorized(N=8, M=12), 64, 64)
    assert f["h_a"] == f["h_s"] == f["context"] == 0 and f["g_s"] > 0
    c = kmacs_per_pixel(Mbt(N=8, M=12), 64, 64)
    # masked 5x5 conv M -> 2M at full kernel + entropy parameters (1x1 convs), per latent position
    ctx = 12 * 24 * 25 / 256
    ep = (48 * 40 + 40 * 32 + 32 * 24) / 256  # 4M -> 10M/3 -> 8M/3 -> 2M
    assert c["context"] * 1e3 == pytest.approx(ctx + ep)
    # the count does not depend on the input size (up to padding to the stride)
    assert kmacs_per_pixel(Mbt(N=8, M=12), 128, 192)["g_s"] == pytest.approx(c["g_s"])


def test_cli_complexity(capsys):
    assert main(["complexity", "shallow", "--N", "8", "--M", "320", "--set", "analysis=cnn",
                 "--size", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "g_s" in out and "5.33" in out and "1,299,003" in out
    assert main(["complexity", "jpeg_like", "--N", "8", "--M", "16", "--set", "analysis=cnn", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["kmacs_per_pixel"]["g_s"] == pytest.approx(16 * 3 * 324 / 256 / 1e3)
    assert main(["complexity", "shallow", "--set", "nope=1"]) == 1
    assert "no option 'nope'" in capsys.readouterr().err
    assert main(["complexity", "vgg"]) == 1
    assert "unknown model 'vgg'" in capsys.readouterr().err
    assert build_model("mbt_mean", N=8, M=12).M == 12


def test_results_carry_complexity():
    point = {"bpp": 0.5, "psnr-rgb": 30.0, "kmacs_g_s": 5.33, "kmacs_decoder": 20.3}
    res = results_dict("x", [point])
    assert res["results"]["kmacs_decoder"] == [20.3] and res["complexity"]["unit"] == "KMACs/pixel"
    assert "dec KMACs/px" in [c.header for c in summary_table(res).columns]


def _curve(name, bpp, psnr, kmacs):
    return {"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr, "kmacs_decoder": [kmacs] * len(bpp)}}


def test_matched_rate_points_and_plot(tmp_path):
    a = _curve("mbt_mean", [0.2, 0.4, 0.8], [28.0, 30.0, 32.0], 108.6)
    b = _curve("shallow", [0.1, 0.5, 1.0], [26.0, 29.0, 31.0], 20.3)
    bpp, pts = matched_rate_points([a, b])
    assert bpp == pytest.approx((0.2 * 0.8) ** 0.5)  # geometric middle of the shared range
    assert pts[0]["psnr-rgb"] == pytest.approx(30.0)  # 0.4 bpp: a's middle point
    # b at 0.4: between 0.1 (26) and 0.5 (29), linear in log bpp
    import math
    t = math.log(4) / math.log(5)
    assert pts[1]["psnr-rgb"] == pytest.approx(26 + 3 * t) and pts[1]["kmacs"] == 20.3
    assert plot_rdc([a, b], tmp_path / "rdc.png").read_bytes()[:4] == b"\x89PNG"
    # no complexity figures or no shared rate: no plot
    assert plot_rdc([{"name": "x", "results": {"bpp": [1.0], "psnr-rgb": [30.0]}}], tmp_path / "n.png") is None
    assert matched_rate_points([a, _curve("far", [2.0, 3.0], [35.0, 36.0], 1.0)]) == (None, [])


def test_report_writes_rd_complexity_plot(tmp_path):
    root = tmp_path / "sweep"
    for group, curve in (("mbt_mean", _curve("", [0.2, 0.4, 0.8], [28.0, 30.0, 32.0], 108.6)),
                         ("shallow", _curve("", [0.1, 0.5, 1.0], [26.0, 29.0, 31.0], 20.3))):
        r = curve["results"]
        for i in range(3):
            d = root / f"{group}{i}"
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- model={group}\n- lmbda={i}\n")
            (d / "results.json").write_text(json.dumps({"name": group, "results": {
                "bpp": [r["bpp"][i]], "psnr-rgb": [r["psnr-rgb"][i]], "ms-ssim": [None],
                "kmacs_decoder": [r["kmacs_decoder"][i]]}}))
    assert main(["report", str(root), "--baseline", "model=mbt_mean"]) == 0
    assert (root / "rdc.png").read_bytes()[:4] == b"\x89PNG"
    assert "![RD-complexity](rdc.png)" in (root / "report.md").read_text()
