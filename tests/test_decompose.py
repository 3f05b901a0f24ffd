"""MSE_t / MSE_a / MSE_q decomposition (Rethinking Latent Variable, WACV 2026, eq. 11) from real bitstreams;
data.invert."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from codecx.conf import CONF_DIR
from codecx.eval.load import prepare
from codecx.eval.loop import evaluate, summarize
from codecx.eval.results import results_dict
from codecx.metrics.decompose import DECOMPOSE_KEYS, decompose, unquantized_reconstruction
from conftest import tiny_codec


def _image(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_mse_t_is_the_eval_psnr_mse():
    torch.manual_seed(0)
    codec = prepare(tiny_codec("mbt_mean"))
    rows = evaluate(codec, [("a", _image(0)), ("b", _image(1))], bytes(8), progress=False,
                    decompose=True)
    for r in rows:
        assert set(DECOMPOSE_KEYS) <= set(r)
        assert 10 * math.log10(255**2 / r["mse_t"]) == pytest.approx(r["psnr-rgb"], abs=1e-9)
        assert r["mse_a_ratio"] == pytest.approx(r["mse_a"] / r["mse_t"])
        assert r["mse_q"] > 0  # an untrained codec: quantization changes the image
    point = summarize(rows)
    assert point["mse_q"] == pytest.approx((rows[0]["mse_q"] + rows[1]["mse_q"]) / 2)
    res = results_dict("t", [point])["results"]
    assert {"mse_t", "mse_a", "mse_q", "mse_a_ratio", "mse_q_ratio"} <= set(res)


class _Round(nn.Module):
    def forward(self, y):
        return torch.round(y * 4)


def test_integer_latents_have_no_quantization_error():
    """With integer y and zero means (bmshj_hyperprior), rounding is the identity: the decoded
    image of the real bitstream is g_s(y), so mse_q = 0 and mse_t = mse_a."""
    torch.manual_seed(0)
    codec = tiny_codec("bmshj_hyperprior")
    codec.backbone.g_a = nn.Sequential(codec.backbone.g_a, _Round())
    codec = prepare(codec)
    x = _image(2)
    row = evaluate(codec, [("a", x)], bytes(8), progress=False, decompose=True)[0]
    assert row["mse_q"] == 0 and row["mse_q_ratio"] == 0
    assert row["mse_t"] == row["mse_a"] > 0
    # against the other reconstruction directly
    x_uq = unquantized_reconstruction(codec, x)
    assert decompose(codec, x, x_uq)["mse_t"] == row["mse_a"]


def test_eval_and_train_configs_compose_with_the_new_keys():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from codecx.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("eval", overrides=["metrics.decompose=true", "ckpt=x.ckpt"])
            assert cfg.metrics.decompose is True
            cfg = compose("train", overrides=["data.invert=true"])
            assert cfg.data.invert is True
    finally:
        GlobalHydra.instance().clear()


def test_invert_doubles_the_training_set_only(tmp_path):
    import numpy as np
    from PIL import Image

    from codecx.data import ImageDataModule

    for i in range(3):
        arr = (np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
    kw = dict(source="folder", train_dir=str(tmp_path), val_dir=str(tmp_path), crop_size=32,
              batch_size=1, augment=False)
    plain, inv = ImageDataModule(**kw), ImageDataModule(**kw, invert=True)
    plain.setup("fit")
    inv.setup("fit")
    n = len(plain.train_set)
    assert n == 3 and len(inv.train_set) == 2 * n
    assert len(inv.val_set) == len(plain.val_set) == 3
    for i in range(n):
        assert torch.equal(inv.train_set[i], plain.train_set[i])
        assert torch.equal(inv.train_set[n + i], 1 - plain.train_set[i])
    with pytest.raises(IndexError):
        inv.train_set[2 * n]


def test_report_section_and_plot(tmp_path):
    from codecx.metrics.decompose import decomposition_section

    def curve(name, bpps, q):
        n = len(bpps)
        return {"name": name, "results": {"bpp": bpps, "psnr-rgb": [30.0] * n, "mse_t": [10.0] * n,
                                          "mse_a": [6.0] * n, "mse_q": [5.0] * n,
                                          "mse_a_ratio": [0.6] * n, "mse_q_ratio": q}}

    md = decomposition_section([curve("none", [0.2, 0.5], [0.5, 0.45]), curve("lpc", [0.3], [0.4]),
                                {"name": "old", "results": {"bpp": [0.1], "psnr-rgb": [25.0]}}],
                               tmp_path / "decomposition.png")
    assert (tmp_path / "decomposition.png").stat().st_size > 0
    rows = [line for line in md.splitlines() if line.startswith("| none") or line.startswith("| lpc")]
    assert rows == ["| none | 0.2000 | 10.00 | 6.00 | 5.00 | 0.600 | 0.500 |",
                    "| none | 0.5000 | 10.00 | 6.00 | 5.00 | 0.600 | 0.450 |",
                    "| lpc | 0.3000 | 10.00 | 6.00 | 5.00 | 0.600 | 0.400 |"]
    assert decomposition_section([{"name": "old", "results": {"bpp": [0.1]}}], tmp_path / "x.png") == ""
