"""BD-rate / BD-PSNR wrapper vs a reference VCEG-M33 implementation on CompressAI's Kodak results."""
import json
import warnings

import numpy as np
import pytest

from codecx.metrics.anchors import list_anchors, load_anchor
from codecx.metrics.bdrate import BDResult, bd, bd_from_results, load_results

ZOO = ["bmshj2018-factorized", "bmshj2018-hyperprior", "cheng2020-anchor", "cheng2020-attn", "mbt2018", "mbt2018-mean"]


def ref_bd_rate(r1, p1, r2, p2):
    """Classic bjontegaard_delta BD-rate: cubic polyfit of ln(rate) vs PSNR, integrated over the PSNR overlap."""
    c1, c2 = np.polyfit(p1, np.log(r1), 3), np.polyfit(p2, np.log(r2), 3)
    lo, hi = max(min(p1), min(p2)), min(max(p1), max(p2))
    i1, i2 = np.polyint(c1), np.polyint(c2)
    d = (np.polyval(i2, hi) - np.polyval(i2, lo) - np.polyval(i1, hi) + np.polyval(i1, lo)) / (hi - lo)
    return (np.exp(d) - 1) * 100


def ref_bd_psnr(r1, p1, r2, p2):
    """Classic bjontegaard_delta BD-PSNR: cubic polyfit of PSNR vs ln(rate), integrated over the log-rate overlap."""
    l1, l2 = np.log(r1), np.log(r2)
    c1, c2 = np.polyint(np.polyfit(l1, p1, 3)), np.polyint(np.polyfit(l2, p2, 3))
    lo, hi = max(min(l1), min(l2)), min(max(l1), max(l2))
    return (np.polyval(c2, hi) - np.polyval(c2, lo) - np.polyval(c1, hi) + np.polyval(c1, lo)) / (hi - lo)


def curves(name):
    d = load_anchor(name)["results"]
    return np.array(d["bpp"]), np.array(d["psnr-rgb"])


def test_anchors_packaged():
    assert set(ZOO) <= set(list_anchors())
    for n in ZOO:
        d = load_anchor(n)
        assert d["name"] == n and d["source"].startswith("InterDigitalInc/CompressAI:results/image/kodak/")
        r = d["results"]
        assert len(r["bpp"]) == len(r["psnr-rgb"]) == len(r["ms-ssim"]) >= 6
    with pytest.raises(ValueError, match="available: .*mbt2018-mean"):
        load_anchor("nope")


def test_kodak_mbt2018_mean_vs_hyperprior():
    ra, pa = curves("bmshj2018-hyperprior")
    rt, pt = curves("mbt2018-mean")
    cub = bd_from_results("bmshj2018-hyperprior", "mbt2018-mean", method="cubic")
    pch = bd_from_results("bmshj2018-hyperprior", "mbt2018-mean", method="pchip")
    assert isinstance(cub, BDResult) and cub.method == "cubic" and pch.method == "pchip"
    assert cub.bd_rate == pytest.approx(ref_bd_rate(ra, pa, rt, pt), abs=1e-3)
    assert cub.bd_psnr == pytest.approx(ref_bd_psnr(ra, pa, rt, pt), abs=1e-4)
    assert -8 < cub.bd_rate < -5 and cub.bd_psnr > 0  # mbt2018-mean saves ~7% over the hyperprior
    assert abs(pch.bd_rate - cub.bd_rate) < 0.5
    assert cub.overlap > 0.9 and cub.quality_range == (pytest.approx(pt.min()), pytest.approx(pa.max()))
    assert cub.rate_range == (pytest.approx(ra.min()), pytest.approx(rt.max()))


@pytest.mark.parametrize("method", ["cubic", "pchip", "akima"])
def test_known_answers(method):
    ra, pa = curves("mbt2018")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bd(ra, pa, ra * 0.9, pa, method).bd_rate == pytest.approx(-10.0, abs=1e-9)
        same = bd(ra, pa, ra, pa, method)
    assert same.bd_rate == pytest.approx(0, abs=1e-9) and same.bd_psnr == pytest.approx(0, abs=1e-9)
    assert same.overlap == 1.0


def test_unsorted_input_and_unequal_counts():
    ra, pa = curves("mbt2018")
    rt, pt = curves("cheng2020-anchor")
    p = np.random.default_rng(0).permutation(len(ra))
    assert bd(ra[p], pa[p], rt, pt, "cubic").bd_rate == pytest.approx(bd(ra, pa, rt, pt, "cubic").bd_rate)
    assert bd([0.1, 1.0], [30, 40], [0.09, 0.9], [30, 40], "pchip").bd_rate == pytest.approx(-10.0)


@pytest.mark.parametrize("rt, pt, msg", [
    ([0.1, 0.2, 0.4], [30, 32, 34], "at least 4"),
    ([0.1, 0.2, 0.2, 0.4], [30, 32, 33, 34], "duplicate rates"),
    ([0.1, 0.2, 0.3, 0.4], [30, 33, 32, 34], "non-monotonic"),
    ([0.1, 0.2, np.nan, 0.4], [30, 32, 33, 34], "NaN"),
    ([0.1, 0.2, 0.3], [30, 32, 33, 34], "3 rates but 4"),
    ([0, 0.2, 0.3, 0.4], [30, 32, 33, 34], "> 0"),
])
def test_validation(rt, pt, msg):
    with pytest.raises(ValueError, match=msg):
        bd([0.1, 0.2, 0.3, 0.4], [30, 32, 33, 34], rt, pt, "cubic")


def test_method_checks():
    with pytest.raises(ValueError, match="unknown BD method"):
        bd([0.1, 0.2], [30, 32], [0.1, 0.2], [30, 32], "linear")
    with pytest.raises(ValueError, match="at least 2"):
        bd([0.1], [30], [0.1, 0.2], [30, 32], "pchip")
    same = ([0.1, 0.2, 0.3, 0.4], [30, 32, 33, 34])
    assert bd(*same, *same, "polyfit").method == "cubic"


def test_overlap_warnings():
    r = [0.1, 0.2, 0.4, 0.8]
    with pytest.warns(UserWarning, match="overlap only"):
        res = bd(r, [30, 32, 34, 36], r, [35, 37, 39, 41], "pchip")
    assert res.overlap == pytest.approx(1 / 11)
    with pytest.warns(UserWarning, match="do not overlap"):
        res = bd(r, [30, 32, 34, 36], r, [40, 41, 42, 43], "pchip")
    assert np.isnan(res.bd_rate) and res.overlap == 0 and np.isfinite(res.bd_psnr)


def test_load_results_legacy_keys(tmp_path):
    ref = load_anchor("mbt2018-mean")["results"]
    old = {"name": "old", "description": "",
           "results": {"bpp": ref["bpp"], "psnr": ref["psnr-rgb"], "ms-ssim-rgb": ref["ms-ssim"]}}
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old))
    d = load_results(f)
    assert d["results"]["psnr-rgb"] == ref["psnr-rgb"] and d["results"]["ms-ssim"] == ref["ms-ssim"]
    for metric in ("psnr-rgb", "ms-ssim"):
        res = bd_from_results("bmshj2018-hyperprior", f, metric=metric)
        by_name = bd_from_results("bmshj2018-hyperprior", "mbt2018-mean", metric=metric)
        assert res.bd_rate == pytest.approx(by_name.bd_rate)
    with pytest.raises(FileNotFoundError, match="available anchors: .*cheng2020-attn"):
        load_results(tmp_path / "missing.json")
    with pytest.raises(KeyError, match="lpips"):
        bd_from_results(f, f, metric="lpips")


def test_bd_rate_per_image(tmp_path):
    """Each image's own curve: a test codec 10% cheaper on image a and 20% on image b at the
    same PSNR gives -10 and -20 (mean -15, SE 5, band t_{0.975,1} * 5 = 63.5); an image only
    the anchor has and one whose curve is not monotonic are dropped, counted and named;
    per_image.csv read back as written."""
    import csv

    from codecx.metrics.bdrate import bd_rate_per_image, read_per_image

    psnr = [26.0, 28.0, 30.0, 32.0]
    bpp = [0.1, 0.2, 0.4, 0.8]
    anchor = [{"image": im, "bpp": b, "psnr-rgb": p} for im in ("a", "b", "c", "flat") for b, p in zip(bpp, psnr)]
    scale = {"a": 0.9, "b": 0.8, "flat": 1.0}
    test = [{"image": im, "bpp": b * scale[im], "psnr-rgb": 27.0 if im == "flat" else p}
            for im in ("a", "b", "flat") for b, p in zip(bpp, psnr)]
    path = tmp_path / "per_image.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "bpp", "psnr-rgb"])
        w.writeheader()
        w.writerows(test)
    r = bd_rate_per_image(anchor, read_per_image(path))
    assert r.values == pytest.approx((-10.0, -20.0), abs=1e-6)
    assert r.skipped == ("c", "flat")
    assert (r.mean, r.se) == pytest.approx((-15.0, 5.0), abs=1e-6)
    assert r.half_width == pytest.approx(12.7062047 * 5.0, rel=1e-6)
    assert str(r) == "-15.00 ± 63.53 (2 images; 2 dropped: c, flat)"
    assert read_per_image(tmp_path / "missing.csv") == []
    assert str(bd_rate_per_image(anchor, [])) == "-"


@pytest.mark.parametrize("n, t", [(2, 12.706205), (4, 3.182446), (10, 2.262157), (24, 2.068658),
                                  (1000, 1.962341)])
def test_per_image_band_is_student_t(n, t):
    """The band is t_{0.975, n-1} * SE at every n (4 images: 3.182 SE, not 2 SE)."""
    from codecx.metrics.bdrate import PerImageBD, t_quantile

    assert t_quantile(n) == pytest.approx(t, abs=1e-6)
    values = tuple(float(v) for v in range(n))  # SE = sd / sqrt(n), sd of 0..n-1
    band = PerImageBD(values)
    se = (sum((v - (n - 1) / 2) ** 2 for v in values) / (n - 1)) ** 0.5 / n ** 0.5
    assert band.se == pytest.approx(se) and band.half_width == pytest.approx(t * se, rel=1e-6)


def test_per_image_band_of_four_crops():
    """Four images (the SGA study's crop count): the band is 3.18 SE (2 SE would be 6.99)."""
    from codecx.metrics.bdrate import PerImageBD

    band = PerImageBD((-30.0, -22.0, -35.0, -20.0))
    assert band.se == pytest.approx(3.4970225, rel=1e-6)  # sd sqrt(146.75 / 3) over sqrt(4)
    assert band.half_width == pytest.approx(3.182446 * 3.4970225, rel=1e-6)
    assert str(band) == "-26.75 ± 11.13 (4 images)"
    assert PerImageBD((1.0,), ("x",)).text() == "- (1 dropped: x)"
