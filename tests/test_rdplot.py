"""RD plot smoke tests."""
import json

import numpy as np
import pytest
from PIL import Image

from codecx.metrics.anchors import load_anchor
from codecx.metrics.rdplot import _xlabel, plot_rd


def test_plot_rd_png(tmp_path):
    out = plot_rd(["mbt2018-mean", load_anchor("cheng2020-attn")], tmp_path / "sub" / "rd.png",
                  anchors=["bmshj2018-hyperprior"])
    assert out.is_file() and out.stat().st_size > 20_000
    with Image.open(out) as im:
        assert im.size[0] > 1040 + 120 and 380 < im.size[1] < 480  # two 520-px panels, the legend right of them
        assert np.asarray(im.convert("L")).std() > 5


def test_missing_metric_skipped(tmp_path):
    r = load_anchor("mbt2018")["results"]
    f = tmp_path / "psnr_only.json"
    f.write_text(json.dumps({"name": "psnr-only", "description": "",
                             "results": {"bpp": r["bpp"], "psnr": r["psnr-rgb"]}}))
    with pytest.warns(UserWarning, match="skipping 'psnr-only' on 'ms-ssim'"):
        out = plot_rd([f], tmp_path / "rd.png", anchors=["mbt2018-mean"])
    assert out.stat().st_size > 10_000


def test_xlabel():
    assert _xlabel([{"name": "a"}]) == "bpp (real bitstream)"
    assert _xlabel([{"bpp_source": "estimated"}]) == "bpp (estimated)"
