"""codecx.compare and `codecx compare` (issue 31 item 2), and the figures of a comparison (item 1):
known BD-rates on synthetic curves, the per-image band, replicate pairs and the seed band, the
CLI's formats, and the figures' labels (only the settings that differ) and files."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecx.compare import (Arm, Curve, compare, deltas, fmt, load_arm, load_curve, load_sweep, markdown,
                            overrides_of, text, to_csv)
from codecx.config.schema import run_name
from codecx.metrics.bdrate import t_quantile
from codecx.metrics.rdplot import Styles, plot_bd_bars, plot_comparison, plot_delta, plot_rd, short_labels

Q = [26.0, 28.0, 30.0, 32.0, 34.0]  # PSNR of the synthetic curves


def bpp_of(q, scale: float = 1.0):
    """A log-linear RD curve: bpp = scale * 0.01 * 10^(PSNR / 10). Scaling the rate by s shifts
    PSNR at equal rate by -10 log10(s): BD-rate (s - 1) * 100 %, BD-PSNR -10 log10(s) dB."""
    return [scale * 0.01 * 10 ** (x / 10) for x in q]


def write_folder(d: Path, name: str, scales, images=("a.png", "b.png", "c.png", "d.png", "e.png")) -> Path:
    """An eval.py-style folder: results.json (the mean curve) and per_image.csv, where image i's
    curve is the log-linear one at rate scale `scales[i]`."""
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for im, s in zip(images, scales):
        for j, q in enumerate(Q):
            rows.append({"checkpoint": f"ckpt{j}", "image": im, "bpp": bpp_of([q], s)[0], "psnr-rgb": q,
                         "ms-ssim": 1 - 10 ** (-(q - 14) / 10)})
    with (d / "per_image.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n = len(images)
    mean = {k: [sum(r[k] for r in rows if r["checkpoint"] == f"ckpt{j}") / n for j in range(len(Q))]
            for k in ("bpp", "psnr-rgb", "ms-ssim")}
    (d / "results.json").write_text(json.dumps({"name": name, "results": mean}))
    return d


def curve(name: str, scale: float, q=Q) -> Curve:
    return Curve({"name": name, "results": {"bpp": bpp_of(q, scale), "psnr-rgb": list(q)}})


# ---------------------------------------------------------------------- the API
def test_known_bd_rate_and_psnr_on_synthetic_curves():
    """An arm at 90% of the baseline's rate everywhere: BD-rate -10% (pchip and cubic), BD-PSNR
    +10 log10(1/0.9) dB; the baseline's row is zero; a one-point arm gets the one-point form."""
    rows = compare(Arm("base", {None: curve("base", 1.0)}), [Arm("arm", {None: curve("arm", 0.9)})])
    base, arm = rows
    assert base.baseline and base.values == {} and base.bd_rate == 0.0
    assert arm.values["bd_rate_pchip"] == pytest.approx(-10.0, abs=1e-6)
    assert arm.values["bd_rate_cubic"] == pytest.approx(-10.0, abs=1e-6)
    assert arm.values["bd_psnr_pchip"] == pytest.approx(-10 * math.log10(0.9), abs=1e-6)
    assert arm.notes == [] and arm.error is None
    one = compare(Arm("base", {None: curve("base", 1.0)}), [Arm("pt", {None: curve("pt", 1.2, [30.0])})],
                  one_point=True)[1]
    assert one.values["bd_rate_pchip"] == pytest.approx(20.0, abs=1e-6)
    assert one.values["bd_psnr_pchip"] == pytest.approx(-10 * math.log10(1.2), abs=1e-6)
    assert "one RD point" in one.notes[0]
    # without the one-point form a one-point curve has no BD-rate, and the note says why
    bad = compare(Arm("base", {None: curve("base", 1.0)}), [Arm("pt", {None: curve("pt", 1.2, [30.0])})])[1]
    assert "bd_rate_pchip" not in bad.values and "this curve: 1 RD points" in bad.error
    assert bad.notes[0].startswith("BD on PSNR undefined: this curve")


def test_per_image_band_from_folders(tmp_path):
    """Each image's own BD-rate (its scale - 1) and the band mean ± t_{0.975,n-1} SE over the images;
    an image evaluated on one side only is dropped and named."""
    s = [0.95, 0.97, 0.99, 0.90, 0.94]
    base = write_folder(tmp_path / "base", "base", [1.0] * 5)
    arm = write_folder(tmp_path / "arm", "arm", s)
    _, row = compare(load_arm(base), [load_arm(arm)])
    d = [(x - 1) * 100 for x in s]
    assert row.per_image.values == pytest.approx(d, abs=1e-6)
    se = np.std(d, ddof=1) / math.sqrt(5)
    assert row.per_image.half_width == pytest.approx(t_quantile(5) * se, rel=1e-9)
    assert t_quantile(5) == pytest.approx(2.776, abs=1e-3)  # not 2: five images
    odd = write_folder(tmp_path / "odd", "odd", s[:4] + [1.0], images=("a.png", "b.png", "c.png", "d.png", "z.png"))
    _, row = compare(load_arm(base), [load_arm(odd)])
    assert row.per_image.skipped == ("e.png", "z.png") and len(row.per_image.values) == 4
    assert "2 dropped: e.png, z.png" in row.per_image.text()
    assert compare(load_arm(base), [load_arm(arm)], per_image=False)[1].per_image is None


def test_replicates_pair_by_seed_and_the_baseline_band(tmp_path):
    """Seed v of the arm against seed v of the baseline, the mean over the pairs, each pair
    listed; the baseline row is its seed band (seed 2 against seed 1); a seed without a baseline
    run is named; per-image values pool over the pairs."""
    base = Arm("ctl", {"1": curve("c1", 1.0), "2": curve("c2", 1.02)})
    arm = Arm("m", {"1": curve("m1", 0.95), "2": curve("m2", 0.97), "3": curve("m3", 0.5)})
    b, m = compare(base, [arm], per_image=False)
    assert b.values["bd_rate_pchip"] == pytest.approx(2.0, abs=1e-6) and b.each["bd_rate_pchip"][0][0] == "seed=2 vs 1"
    want = [(0.95 - 1) * 100, (0.97 / 1.02 - 1) * 100]
    assert [v for _, v in m.each["bd_rate_pchip"]] == pytest.approx(want, abs=1e-6)
    assert m.values["bd_rate_pchip"] == pytest.approx(sum(want) / 2, abs=1e-6)
    assert m.pairs == 2 and "no baseline run for seed=3" in m.notes
    head, body = __import__("codecx.compare", fromlist=["table"]).table([b, m], per_image=False)
    assert "mean BD-rate % (pchip)" in head and "BD-rate % by seed" in head
    assert body[1][head.index("BD-rate % by seed")] == "seed=1: -5.00; seed=2: -4.90"


def test_load_curve_merges_run_folders(tmp_path):
    """A folder of run folders (codecx report --eval-dir) is one curve, its points by bpp."""
    for j, q in enumerate(Q):
        d = tmp_path / "sweep" / f"lmbda={j}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"name": d.name, "results": {
            "bpp": bpp_of([q]), "psnr-rgb": [q]}}))
    c = load_curve(tmp_path / "sweep")
    assert c.results["name"] == "sweep" and c.results["results"]["psnr-rgb"] == Q
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_curve(tmp_path)


def test_load_sweep_groups_runs_by_their_overrides(tmp_path):
    """A `codecx report --eval-dir` folder (one run per folder, named by its overrides): groups
    by every override but lmbda and seed, named by the overrides that differ, seeds as
    replicates that compare pairs; a cut / hashed name is refused with what to do instead."""
    scale = {("none", "1"): 1.0, ("none", "2"): 1.02, ("cse", "1"): 0.9}
    for (reg, seed), s in scale.items():
        for j, q in enumerate(Q):
            d = tmp_path / "kodak" / f"alpha=1,experiment=x,lmbda={j},reg={reg},seed={seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"name": d.name, "results": {
                "bpp": bpp_of([q], s), "psnr-rgb": [q]}}))
    arms = load_sweep(tmp_path / "kodak")
    assert sorted(arms) == ["reg=cse", "reg=none"] and list(arms["reg=none"].replicates) == ["1", "2"]
    assert arms["reg=cse"].replicates["1"].results["results"]["psnr-rgb"] == Q
    b, m = compare(arms["reg=none"], [arms["reg=cse"]], per_image=False)
    assert b.values["bd_rate_pchip"] == pytest.approx(2.0, abs=1e-6)
    assert m.each["bd_rate_pchip"] == [("seed=1", pytest.approx(-10.0, abs=1e-6))]
    assert list(load_sweep(tmp_path / "kodak", where=lambda n: "reg=none" in n)) == ["kodak"]
    assert overrides_of("transform=[a,b],lmbda=0.1") == {"transform": "[a,b]", "lmbda": "0.1"}
    with pytest.raises(ValueError, match="not KEY=VALUE.*load_arm"):
        overrides_of(run_name(",".join(f"key{i}=value" for i in range(30))))  # cut and hashed
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        overrides_of("lmbda=1,default")


def test_cli_formats(tmp_path, capsys):
    """`codecx compare BASELINE ARM --per-image` in text, --markdown and --csv; --figures."""
    from codecx.cli import main

    base = write_folder(tmp_path / "control", "control", [1.0] * 5)
    arm = write_folder(tmp_path / "lpc", "lpc", [0.95, 0.97, 0.99, 0.90, 0.94])
    assert main(["compare", str(base), str(arm), "--per-image"]) == 0
    out = capsys.readouterr().out
    assert "control (baseline)" in out and "-5.00 ± " in out and "(5 images)" in out
    assert main(["compare", str(base), str(arm), "--markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| arm | points |") and md[2].startswith("| control (baseline) | 5 |")
    assert "per image" not in md[0] and md[3].split(" | ")[4] == "-5.00"
    assert main(["compare", str(base), str(arm), "--csv", "--per-image", "--figures", str(tmp_path / "fig")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["arm"] for r in rows] == ["control", "lpc"] and rows[0]["baseline"] == "1"
    assert float(rows[1]["bd_rate_pchip"]) == pytest.approx(-5.0, abs=1e-3)
    assert float(rows[1]["image_bd_rate"]) == pytest.approx(-5.0, abs=1e-6) and rows[1]["images"] == "5"
    for f in ("rd.png", "delta_psnr.png", "bd_rate.png"):
        assert (tmp_path / "fig" / f).read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(base), str(base)]) == 1  # two curves named alike
    assert "name them with --label" in capsys.readouterr().err
    assert main(["compare", str(base), str(base), "--label", "a", "--label", "b"]) == 0
    assert main(["compare", str(base), str(tmp_path / "nothing")]) == 1
    assert "is neither a results file nor a packaged anchor" in capsys.readouterr().err


# ---------------------------------------------------------------------- the figures
NAMES = ["data.invert=False,transform=[]", "data.invert=True,transform=[]", "data.invert=False,transform=lpc",
         "data.invert=False,transform=lpc,transform.lpc.latent_mse=1", "data.invert=True,transform=lrp",
         "data.invert=False,transform=lpc,transform.lpc.params=predicted"]


def test_labels_are_the_settings_that_differ():
    """Only what differs between the groups, shortened: on/off settings by name, empty ones as
    'no X', choices by value, numbers as key=value; colours by family, markers by the rest."""
    assert short_labels(NAMES) == ["no transform", "no transform, invert", "lpc", "lpc, latent_mse",
                                   "lrp, invert", "lpc, predicted"]
    assert short_labels(["reg=cse,alpha=0.1,seed=1", "reg=cse,alpha=1,seed=1"]) == ["alpha=0.1", "alpha=1"]
    labels = short_labels(["transform=[]", "transform=lrp,transform.lrp.latent_mse=1"])
    assert labels == ["no transform", "lrp, latent_mse"]
    assert short_labels(["mbt2018-mean", "cheng2020-attn"]) == ["mbt2018-mean", "cheng2020-attn"]
    st = Styles(NAMES, baseline=NAMES[0])
    assert st.colour[NAMES[0]] == "black" and st.colour[NAMES[2]] == st.colour[NAMES[3]] != st.colour[NAMES[4]]
    assert st.marker[NAMES[2]] != st.marker[NAMES[3]] and st.marker[NAMES[1]] == st.marker[NAMES[4]]  # invert
    assert st.order(NAMES)[:2] == [NAMES[0], NAMES[1]]


def _arms(n: int, seeds=("1", "2")):
    """n groups (the first the control) of the compensation study's kind, 4 points each, seeds."""
    names = [f"data.invert={inv},transform={t}" + (f",transform.{t}.latent_mse=1" if mse else "")
             for inv in ("False", "True") for mse in (0, 1) for t in ("[]", "lpc", "lrp", "fpc", "mlp")][:n]
    rng = np.random.default_rng(0)
    arms = []
    for i, name in enumerate(names):
        reps = {s: curve(f"{name},seed={s}", 1 + 0.02 * rng.standard_normal() + 0.01 * i, Q[:4]) for s in seeds}
        arms.append(Arm(name, reps))
    return arms


@pytest.mark.parametrize("n", [2, 6, 20])
def test_figures_render_at_2_6_20_groups(tmp_path, n):
    """rd.png, delta_psnr.png and bd_rate.png of n groups with two seeds: readable PNGs (not blank),
    taller bars and more ΔPSNR panels as the groups grow."""
    arms = _arms(n)
    rows = compare(arms[0], arms[1:], per_image=False)
    paths = plot_comparison(rows, arms[0], arms[1:], tmp_path, title=f"{n} groups")
    sizes = {}
    for k, p in paths.items():
        with Image.open(p) as im:
            sizes[k] = im.size
            assert np.asarray(im.convert("L")).std() > 5
    assert sizes["bars"][1] > 100 + 25 * n  # one bar per group
    if n == 20:
        assert sizes["delta"][1] > 700  # one panel per arm in a grid


def test_plot_rd_legend_outside_and_anchor(tmp_path):
    """The legend sits right of the axes (the image is wider than the panels), anchors included."""
    out = plot_rd([curve("reg=none", 1.0).results, curve("reg=cse", 0.9).results], tmp_path / "rd.png",
                  anchors=["mbt2018-mean"], metrics=("psnr-rgb",), baseline="reg=none")
    with Image.open(out) as im:
        assert im.size[0] > 650  # 520 px of panel + the legend
    d = plot_delta(Arm("reg=none", {None: curve("a", 1.0)}), [Arm("reg=cse", {None: curve("b", 0.9)})],
                   tmp_path / "d.png")
    assert d.is_file()
    rows = compare(Arm("reg=none", {None: curve("a", 1.0)}), [Arm("reg=cse", {None: curve("b", 0.9)})])
    assert plot_bd_bars(rows, tmp_path / "b.png").is_file()


def test_text_and_markdown_have_every_arm():
    rows = compare(Arm("base", {None: curve("base", 1.0)}), [Arm("a", {None: curve("a", 0.9)}),
                                                            Arm("b", {None: curve("b", 1.1)})])
    assert markdown(rows).count("\n") == 4 and "| b | 5 |" in markdown(rows)
    assert text(rows).splitlines()[3].startswith("a ") and "+10.00" in text(rows)
    assert to_csv(rows).count("\n") == 4  # header + 3 rows


# ---------------------------------------------------------------------- the studies
ROOT = Path(__file__).resolve().parents[1]


def test_studies_import_no_other_study():
    """Study scripts share code through codecx (codecx.compare), never through sys.path."""
    import re

    for f in (ROOT / "experiments").rglob("*.py"):
        for m in re.finditer(r"sys\.path\.insert\(0, *(.+)\)", f.read_text()):
            assert "ROOT" in m.group(1) and "experiments" not in m.group(1), f"{f}: {m.group(0)}"


def test_compensation_table_reproduces_the_committed_report():
    """experiments/compensation/table.py's arms (found from their overrides) through compare
    give the BD figures of the committed codecx report, cell by cell, for all 20 cells."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comp_table", ROOT / "experiments" / "compensation" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    arms = table.arms()
    assert len(arms) == 20 and list(arms["data.invert=False,transform=[]"].replicates) == ["1", "2"]
    with (ROOT / "experiments" / "compensation" / "results" / "report.csv").open() as f:
        report = {r["group"].replace(" (baseline)", ""): r for r in csv.DictReader(f)}
    base = arms.pop("data.invert=False,transform=[]")
    rows = compare(base, list(arms.values()), per_image=False)
    assert {r.name for r in rows} == set(report)
    for r in rows:
        for k in ("bd_rate_pchip", "bd_psnr_pchip", "bd_rate_cubic", "bd_rate_msssim"):
            assert fmt(k, r.values[k]) == report[r.name][k], (r.name, k)
    # the three-seed round (issue 29 item 2): three replicates, the same figures as its report
    arms = table.arms(table.HERE / "seeds3" / "kodak", ("1", "2", "3"))
    assert len(arms) == 3 and list(arms["data.invert=False,transform=[]"].replicates) == ["1", "2", "3"]
    with (ROOT / "experiments" / "compensation" / "seeds3" / "results" / "report.csv").open() as f:
        report = {r["group"].replace(" (baseline)", ""): r for r in csv.DictReader(f)}
    base = arms.pop("data.invert=False,transform=[]")
    for r in compare(base, list(arms.values()), per_image=False):
        name = r.name.replace("data.invert=False,", "")  # the round ran no inverse training
        for k in ("bd_rate_pchip", "bd_rate_msssim"):
            assert fmt(k, r.values[k]) == report[name][k], (r.name, k)


def test_lattice_finetune_table_reproduces_and_pairs_seeds(tmp_path, capsys):
    """experiments/latent_properties/finetune_table.py prints its committed table from the
    committed Kodak folders; with a second seed of every arm (NAME_seed2) it pairs the arms seed
    by seed (each seed's BD-rate listed, the mean of them in the BD column) and prints the
    control's seed band (issue 29 item 2)."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("ft_table", ROOT / "experiments" / "latent_properties"
                                                  / "finetune_table.py")
    ft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)
    src = ROOT / "experiments" / "latent_properties" / "finetune"
    ft.main(str(src))
    assert capsys.readouterr().out == (src / "table.md").read_text()
    ft.main(str(src / "seeds3"))  # the three-seed round (experiments/seeds3.sh)
    assert capsys.readouterr().out == (src / "seeds3" / "table.md").read_text()
    for name in ("control_scalar", "control_hex", "hex_finetuned"):
        shutil.copytree(src / name, tmp_path / name)
    shutil.copytree(src / "control_scalar_seed2", tmp_path / "control_scalar_seed2")
    shutil.copytree(src / "control_scalar_seed2", tmp_path / "control_hex_seed2")  # seed 2: Hex = its control
    shutil.copytree(src / "hex_finetuned", tmp_path / "hex_finetuned_seed2")
    ft.main(str(tmp_path))
    out = capsys.readouterr().out
    band = compare(load_arm(src / "control_scalar"), [load_arm(src / "control_scalar_seed2")], per_image=False)[1]
    assert f"seed=2 vs 1: {fmt('bd_rate_pchip', band.values['bd_rate_pchip'])}" in out
    row = next(r for r in out.splitlines() if r.startswith("| control_hex | control_scalar"))
    s1 = compare(load_arm(src / "control_scalar"), [load_arm(src / "control_hex")], per_image=False)[1]
    want = s1.values["bd_rate_pchip"] / 2  # the mean of seed 1 and seed 2 (0: control_hex is its control)
    assert f"seed=1: {fmt('bd_rate_pchip', s1.values['bd_rate_pchip'])}, seed=2: +0.00" in row
    assert f"| {want:+.2f} |" in row


def test_cse_table_reproduces_the_committed_reports():
    """experiments/cse/table.py's arms (load_sweep over the committed Kodak folders) through
    compare give the BD figures of both committed codecx reports, cell by cell."""
    cse = ROOT / "experiments" / "cse"
    for kodak, report, where in ((cse / "kodak", cse / "results" / "report.csv", None),
                                 (cse / "ablation" / "kodak", cse / "ablation" / "results" / "report.csv",
                                  lambda n: "reg.bin_width=" not in n)):
        with report.open() as f:
            want = [r for r in csv.DictReader(f)]
        arms = load_sweep(kodak, where=where)
        base = arms.pop(want[0]["group"].replace(" (baseline)", ""))
        rows = compare(base, list(arms.values()), per_image=False)
        assert len(rows) == len(want)
        by_values = {tuple(fmt(k, r.values[k]) for k in ("bd_rate_pchip", "bd_psnr_pchip")): r for r in rows}
        for w in want:  # the report names groups from the runs' configs: matched by their figures
            r = by_values[(w["bd_rate_pchip"], w["bd_psnr_pchip"])]
            for k in ("bd_rate_cubic", "bd_psnr_cubic", "bd_rate_msssim"):
                assert fmt(k, r.values[k]) == w[k], (w["group"], k)


def test_report_writes_the_figures_of_small_effects(tmp_path):
    """codecx report: delta_psnr.png and bd_rate.png beside rd.png, linked in report.md."""
    from codecx.eval.report import build_report
    from test_sweep_report import _fake_sweep

    pts = {(f"reg={g}", f"lmbda={lm}"): (bpp_of([q], s)[0], q) for g, s in (("none", 1.0), ("cse", 0.9), ("b", 1.05))
           for lm, q in ((1, 28.0), (2, 31.0), (3, 34.0))}
    paths = build_report(_fake_sweep(tmp_path / "sweep", pts), "reg=none", progress=False)
    md = paths["md"].read_text()
    for key, name in (("delta", "delta_psnr.png"), ("bars", "bd_rate.png")):
        assert paths[key].name == name and paths[key].read_bytes()[:4] == b"\x89PNG" and f"]({name})" in md
    assert md.index("](rd.png)") < md.index("](delta_psnr.png)") < md.index("## Runs")


def test_deltas_at_one_rate_pair_seeds_per_image(tmp_path):
    """compare.deltas (arms coded at one rate, where BD is undefined): per image the mean of the
    seed pairs' differences, mean ± t·SE over the images; the baseline's seed band; one seed pairs
    with the baseline's same seed only."""
    def folder(name, psnr):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"name": name, "results": {"bpp": [0.3], "psnr-rgb": [0.0]}}))
        with (d / "per_image.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "bpp", "psnr-rgb"])
            w.writeheader()
            w.writerows({"image": f"im{i}", "bpp": 0.3, "psnr-rgb": v} for i, v in enumerate(psnr))
        return d

    base = load_arm(name="none", replicates={"1": folder("n1", [30, 31, 32]), "2": folder("n2", [30.2, 31, 32])})
    arm = load_arm(name="gan", replicates={"1": folder("g1", [29, 30, 31.5]), "2": folder("g2", [29.2, 30.5, 31])})
    d = deltas(base, arm, keys=("psnr-rgb",))["psnr-rgb"]
    per = [-1.0, (-1 - 0.5) / 2, (-0.5 - 1) / 2]  # per image: mean of seed 1's and seed 2's difference
    m = sum(per) / 3
    se = math.sqrt(sum((v - m) ** 2 for v in per) / 2 / 3)
    assert (d.n, d.mean) == (3, pytest.approx(m)) and d.band == pytest.approx(t_quantile(3) * se)
    assert [lbl for lbl, _ in d.each] == ["seed=1", "seed=2"] and d.each[0][1] == pytest.approx(-2.5 / 3)
    band = deltas(base, base, is_base=True)["psnr-rgb"]
    assert band.mean == pytest.approx(0.2 / 3) and band.each == (("seed=2 vs 1", pytest.approx(0.2 / 3)),)
    one = deltas(base, load_arm(name="x", replicates={"1": tmp_path / "g1"}))["psnr-rgb"]
    assert one.mean == pytest.approx(-2.5 / 3)
    with pytest.raises(ValueError, match="no replicate paired"):
        deltas(base, load_arm(name="y", replicates={"3": tmp_path / "g1"}))


def test_cse_table_seeds3_pairs_each_seed_with_the_shared_control(tmp_path):
    """experiments/cse/table.py seeds3 (issue 29 item 2): each CSE arm's seed against the shared
    control's same seed (seed 1 control_scalar, seed s control_scalar_seed<s>), the control's
    seeds 2 and 3 against seed 1 as its band; an arm not evaluated is left out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cse_table", ROOT / "experiments" / "cse" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    control, arms = tmp_path / "control", tmp_path / "arms"
    for s, c in (("1", 1.0), ("2", 1.01), ("3", 0.98)):
        write_folder(control / ("control_scalar" if s == "1" else f"control_scalar_seed{s}"), "c", [c] * 5)
        write_folder(arms / f"nats_per_dim_seed{s}", "n", [c * 1.05] * 5)  # 5% more rate than its control
    text = table.seeds3(arms_dir=arms, control_dir=control, out=tmp_path / "out")
    assert (tmp_path / "out" / "table.md").read_text().count(text) == 1
    base_row = next(r for r in text.splitlines() if r.startswith("| control (third zoo build) (baseline)"))
    assert "seed=2 vs 1: +1.00" in base_row and "seed=3 vs 1: -2.00" in base_row
    arm_row = next(r for r in text.splitlines() if r.startswith("| alpha=0.1,reg=cse,reg.units=nats_per_dim"))
    assert "| +5.00 | seed=1: +5.00; seed=2: +5.00; seed=3: +5.00 |" in arm_row
    assert "reg.units=bpp" not in text
    table.seeds3(out=tmp_path / "committed")  # the committed round's table, from its committed folders
    assert (tmp_path / "committed" / "table.md").read_text() == (table.SEEDS3 / "table.md").read_text()
