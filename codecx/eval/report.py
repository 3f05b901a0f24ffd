"""Sweep report: the runs of a Hydra multirun grouped by the configuration each run used
(`codecx.eval.runs`), each evaluated from real bitstreams (or its results.json reused), and BD-rate /
BD-PSNR (Bjøntegaard, VCEG-M33) of every group against a baseline group tabulated, with RD plots."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.utils import instantiate
from omegaconf import OmegaConf

from codecx.compare import Arm, Curve, bd_pair, compare, fmt as _fmt, merge_results
from codecx.eval.load import load_codec
from codecx.eval.loop import dataset_images, evaluate_codecs
from codecx.eval.results import data_key, data_label, job_failure, rd_results, write_results
from codecx.eval.runs import Run, find_baseline, find_runs, group_runs, load_run_config, own_data_key
from codecx.metrics.bdrate import read_per_image
from codecx.metrics.complexity import plot_rdc
from codecx.metrics.decompose import DECOMPOSE_KEYS, decomposition_section
from codecx.metrics.rdplot import plot_bd_bars, plot_delta, plot_rd


def run_results(run: Run, results_path: Path, data_override: Optional[Dict[str, Any]],
                progress: bool, cache: Dict[str, Any], decompose: bool = False,
                lpips=None, fid=None) -> Optional[Dict[str, Any]]:
    """A run's results: `results_path` when it is newer than the checkpoint and for the same
    images (and has the decomposition when `decompose`, LPIPS / FID when those metrics are
    given), else evaluated from the run's last.ckpt on its own validation data (or
    `data_override`) and written there."""
    fresh = results_path.is_file() and (not run.ckpt.is_file()
                                        or results_path.stat().st_mtime >= run.ckpt.stat().st_mtime)
    if fresh:  # written after the checkpoint, for the same images
        res = json.loads(results_path.read_text())
        stored = res.get("data")
        want = data_key(data_override) if data_override is not None else own_data_key(run)
        need = [*(DECOMPOSE_KEYS if decompose else ()), *(["lpips"] if lpips is not None else []),
                *(["fid", "kid"] if fid is not None else [])]
        if (stored is None or want is None or stored == want) and set(need) <= set(res.get("results", {})):
            return res
    if not run.ckpt.is_file():
        return None
    codec, config = load_codec(run.ckpt)
    data = dict(config["data"], **(data_override or {}))
    images = _val_images(data, cache)
    points, rows = evaluate_codecs([(str(run.ckpt), codec, config)], images, lpips=lpips, fid=fid,
                                   progress=progress, decompose=decompose)
    res = rd_results(run.dir.name, points, f"{config['model']['name']}, lmbda={config['lmbda']}, "
                     f"{len(images)} image(s) ({data_label(data)})", data, images=[len(images)])
    write_results(results_path.parent, res, rows)
    return res


FIGURES_MD = ("![PSNR minus the baseline's at equal rate](delta_psnr.png)\n\n"
              "![BD-rate against the baseline](bd_rate.png)\n\n"
              "delta_psnr.png: each group's PSNR minus the baseline's at the same rate (pchip in log bpp, "
              "as BD-PSNR; the mean over its seed pairs), grey: the baseline's seed band when it has "
              "replicates. bd_rate.png: BD-rate (pchip) sorted, whiskers: the per-image band (± t·SE, 95%), "
              "dots: each seed pair, grey: the baseline's seed band.\n")
COLUMNS = [("group", "group"), ("runs", "runs"), ("lmbda", "λ"), ("bpp", "bpp"), ("psnr", "PSNR dB"),
           ("bd_rate_pchip", "BD-rate % (pchip)"), ("bd_psnr_pchip", "BD-PSNR dB (pchip)"),
           ("bd_rate_cubic", "BD-rate % (cubic)"), ("bd_psnr_cubic", "BD-PSNR dB (cubic)"),
           ("bd_rate_msssim", "BD-rate % MS-SSIM (pchip)"),
           ("image_bd_rate", "BD-rate % per image (pchip, ± t·SE, 95%)"), ("notes", "notes")]


def build_report(multirun_dir: str | Path, baseline: Optional[str], out_dir: Optional[str | Path] = None,
                 eval_dir: Optional[str | Path] = None, data_val_dir: Optional[str | Path] = None,
                 progress: bool = True, replicates: Optional[str] = None,
                 anchor: Any = None, include_incomplete: bool = False,
                 decompose: bool = False, lpips=None, fid=None) -> Dict[str, Path]:
    """Write report.md, report.csv and rd.png for a multirun; returns their paths.

    `baseline` None: the first group (sorted by label). `anchor`: a curve every group is also
    compared with (BD-rate / BD-PSNR pchip columns, dashed in rd.png): a packaged CompressAI
    curve, a results JSON, or 'jpeg' / 'webp' computed on the evaluation images.

    `replicates` (e.g. "seed"): an override whose values repeat the same experiment. Groups then
    ignore it; each group's BD-rate is the mean over its replicates, each compared with the
    baseline's run of the same replicate value (`*_each` columns list them), and the baseline
    row holds the noise band: every other replicate of the baseline against its first one.

    Groups follow the configuration each run used (`group_runs`). A run whose last.ckpt stopped
    before its trainer.max_steps (killed) is flagged in the tables and left out of every curve
    and BD figure, unless `include_incomplete`. `decompose`: evaluate with the MSE_t / MSE_a /
    MSE_q decomposition (a section and decomposition.png). `lpips` / `fid`: an LPIPSMetric /
    FIDKID to evaluate the runs with (their columns in the runs table; stored results without
    them are re-evaluated).

    The steps: `collect_runs` (results and configurations), `compare_groups` (curves and BD
    figures), `group_rows` (the table), `write_figures`, `report_columns` / report.csv,
    `report_markdown`."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{multirun_dir}: no such directory (a Hydra multirun folder, e.g. runs/sweep/NAME)")
    data_override = None if data_val_dir is None else {
        "source": "folder", "val_dir": str(data_val_dir), "train_dir": None, "val_crop_size": None,
        "max_val_images": None}
    cache: Dict[str, Any] = {}
    runs, failed, skipped = collect_runs(root, eval_dir, data_override, progress, cache, decompose, lpips, fid)
    grouped = compare_groups(runs, baseline, replicates, include_incomplete)
    rows = group_rows(grouped, replicates, include_incomplete)
    ref = None if anchor is None else _anchor_cells(anchor, rows, grouped.used, data_override, cache)
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    paths, decomposition = write_figures(out, root.name, grouped, ref, replicates)
    columns = report_columns(rows, ref, replicates)
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k, _ in columns])
        w.writeheader()
        w.writerows(rows)
    paths["md"].write_text(report_markdown(root, grouped, baseline or "not set: the first group", rows, skipped,
                                           paths, columns, replicates, failed, ref, decomposition))
    return paths


def collect_runs(root: Path, eval_dir: Optional[str | Path], data_override: Optional[Dict[str, Any]],
                 progress: bool, cache: Dict[str, Any], decompose: bool = False, lpips=None, fid=None
                 ) -> Tuple[List[Run], List[Tuple[str, str]], List[str]]:
    """(runs with results and configurations, failed jobs as (folder, reason), skipped runs) of a
    multirun folder: each run's results reused or evaluated (`run_results`, written under
    `eval_dir` when given, else in the run's folder)."""
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"{root}: no runs found (no */.hydra/overrides.yaml below it)")
    # jobs that stopped with an error (train.py records why): named in the report, never in a curve
    failed = [(str(r.dir.relative_to(root)), why) for r in runs if (why := job_failure(r.dir))]
    runs = [r for r in runs if not job_failure(r.dir)]
    if not runs:
        raise ValueError(f"{root}: every job failed: " + "; ".join(f"{n}: {w}" for n, w in failed))
    skipped = []
    for r in runs:
        where = (Path(eval_dir) / r.dir.relative_to(root) if eval_dir else r.dir) / "results.json"
        r.results = run_results(r, where, data_override, progress, cache, decompose, lpips, fid)
        r.per_image = read_per_image(where.parent / "per_image.csv")
        if r.results is None:
            skipped.append(f"{r.dir.relative_to(root)}: no checkpoints/last.ckpt and no results.json")
    runs = [r for r in runs if r.results is not None]
    if not runs:
        raise ValueError(f"{root}: none of the runs has a checkpoint or results: " + "; ".join(skipped))
    for r in runs:
        load_run_config(r)
    return runs, failed, skipped


@dataclass
class Grouped:
    """The runs of a report in groups (the baseline first) and compared with the baseline."""

    groups: Dict[str, List[Run]]
    base: str                          # the baseline group's label
    used: Dict[str, List[Run]]         # the runs each group's curve is made of
    curves: Dict[Tuple[str, Optional[str]], Dict[str, Any]]  # (group, replicate value) -> results
    arms: Dict[str, Arm]
    compared: Dict[str, Any]           # group -> codecx.compare's comparison with the baseline


def compare_groups(runs: Sequence[Run], baseline: Optional[str], replicates: Optional[str],
                   include_incomplete: bool) -> Grouped:
    """Group the runs (`group_runs`), find the baseline group (None: the first label) and compare
    every group's curve with it (codecx.compare: per replicate pair with `replicates`, and the
    per-image band from the runs' per_image.csv rows)."""
    groups = group_runs(runs, exclude=[replicates] if replicates else ())
    base = find_baseline(groups, baseline) if baseline else sorted(groups)[0]
    groups = {base: groups.pop(base), **groups}  # baseline first
    # the runs each group's curve is made of: killed runs only with include_incomplete
    used = {g: [r for r in rs if include_incomplete or not r.incomplete] for g, rs in groups.items()}
    # one curve per group, or per (group, replicate value) with replicates
    split = {g: _by_replicate(rs, replicates) for g, rs in used.items() if rs}
    curves = {(g, v): merge_results(g if v is None else f"{g},{replicates}={v}", [r.results for r in rs])
              for g, by in split.items() for v, rs in by.items()}
    arms = {g: Arm(g, {v: Curve(curves[g, v], [row for r in rs for row in r.per_image]) for v, rs in by.items()})
            for g, by in split.items()}
    compared = {c.name: c for c in compare(arms[base], [a for g, a in arms.items() if g != base],
                                           replicate_key=replicates or "seed")} if base in arms else {}
    return Grouped(groups, base, used, curves, arms, compared)


def group_rows(grouped: Grouped, replicates: Optional[str], include_incomplete: bool) -> List[Dict[str, Any]]:
    """One row of report.csv per group: its runs, lambdas, bpp / PSNR ranges, BD figures against
    the baseline (with replicates: their mean and each one) and notes."""
    base, used, compared = grouped.base, grouped.used, grouped.compared
    rows = []
    for g, rs in grouped.groups.items():
        row = {"group": g + (" (baseline)" if g == base else ""), "runs": len(used[g]),
               "lmbda": " ".join(sorted({r.value("lmbda") for r in rs}, key=_num))}
        flagged = [r for r in rs if r.incomplete]
        if flagged:
            what = ("included" if include_incomplete
                    else "left out of the curves and BD figures (--include-incomplete uses them)")
            row["notes"] = (f"{len(flagged)} incomplete run(s) {what}: " + "; ".join(
                f"{r.dir.name} (step {r.step} of {r.max_steps})" for r in flagged))
            if not include_incomplete:
                row["runs"] = f"{len(used[g])} (+{len(flagged)} incomplete)"
        if not used[g]:
            rows.append(row)
            continue
        c = merge_results(g, [r.results for r in used[g]])["results"]
        row.update(bpp=f"{min(c['bpp']):.4f}-{max(c['bpp']):.4f}",
                   psnr=f"{min(c['psnr-rgb']):.2f}-{max(c['psnr-rgb']):.2f}")
        hf = [v for v in c.get("hf_ratio", []) if v is not None]  # codecx.metrics.realism
        if hf:
            row["hf_ratio"] = f"{min(hf):.3f}-{max(hf):.3f}"
        seeds = sorted({r.value("seed") for r in used[g]}, key=_num)
        if replicates is None and len(seeds) > 1:
            row["notes"] = " / ".join([*filter(None, [row.get("notes")]), f"pooled over seed={','.join(seeds)} "
                                       "(--replicates seed: paired means and the noise band)"])
        if base not in compared:
            if g != base or replicates is not None:
                row["notes"] = " / ".join([*filter(None, [row.get("notes")]),
                                           "no BD figures: the baseline has no complete run"])
        elif replicates is not None or g != base:  # the baseline's row with replicates: its seed band
            c = compared[g]
            cells = {}
            for k, v in c.values.items():
                cells[k] = _fmt(k, v)
                if replicates is not None:
                    cells[f"{k}_each"] = "; ".join(f"{label}: {_fmt(k, x)}" for label, x in c.each[k])
            if c.pairs:
                cells["image_bd_rate"] = c.per_image.text("image-pairs" if c.pairs > 1 else "images")
            row.update(cells, notes=" / ".join([*filter(None, [row.get("notes")]), *c.notes]))
        rows.append(row)
    return rows


def write_figures(out: Path, title: str, grouped: Grouped, ref: Optional[Dict[str, Any]],
                  replicates: Optional[str]) -> Tuple[Dict[str, Path], str]:
    """rd.png (+ delta_psnr.png and bd_rate.png with more than one compared group, rdc.png with
    complexity figures, decomposition.png with the decomposition) in `out`: (the report's paths,
    report.md / report.csv included, the decomposition section of report.md or '')."""
    base, used, arms, compared = grouped.base, grouped.used, grouped.arms, grouped.compared
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "rd.png"}
    plot_rd(list(grouped.curves.values()), paths["png"], title=f"{title}: baseline {base}",
            anchors=[ref] if ref is not None else (), baseline=base, replicate_key=replicates)
    if len(compared) > 1:  # small effects: PSNR minus the baseline's at equal rate; BD-rate bars
        paths["delta"] = plot_delta(arms[base], [a for g, a in arms.items() if g != base], out / "delta_psnr.png",
                                    title=f"{title}: PSNR minus the baseline's at equal rate")
        paths["bars"] = plot_bd_bars(list(compared.values()), out / "bd_rate.png",
                                     title=f"{title}: BD-rate against the baseline")
    # rate-distortion-complexity (Yang & Mandt 2023): PSNR at a matched rate vs decoder KMACs/px
    rdc = plot_rdc([merge_results(g, [r.results for r in rs]) for g, rs in used.items() if rs],
                   out / "rdc.png", title=f"{title}: PSNR at matched rate vs decoder complexity")
    if rdc is not None:
        paths["rdc"] = rdc
    dec = decomposition_section([merge_results(g, [r.results for r in rs]) for g, rs in used.items() if rs],
                                out / "decomposition.png")  # runs evaluated with metrics.decompose
    if dec:
        paths["decomposition"] = out / "decomposition.png"
    return paths, dec or ""


def report_columns(rows: Sequence[Dict[str, Any]], ref: Optional[Dict[str, Any]],
                   replicates: Optional[str]) -> List[Tuple[str, str]]:
    """(key, title) of report.csv's and report.md's table columns."""
    columns = COLUMNS if replicates is None else _replicate_columns(replicates)
    if any("hf_ratio" in r for r in rows):  # before `notes`
        columns = [*columns[:-1], ("hf_ratio", "HF ratio"), columns[-1]]
    if ref is not None:  # before `notes`
        columns = [*columns[:-1], ("anchor_bd_rate", f"BD-rate % vs {ref['name']} (pchip)"),
                   ("anchor_bd_psnr", f"BD-PSNR dB vs {ref['name']} (pchip)"), columns[-1]]
    return columns


def report_markdown(root: Path, grouped: Grouped, spec: str, rows: List[Dict[str, Any]], skipped: List[str],
                    paths: Dict[str, Path], columns: Sequence[Tuple[str, str]], replicates: Optional[str],
                    failed: Sequence[Tuple[str, str]], ref: Optional[Dict[str, Any]], decomposition: str) -> str:
    """report.md: `_markdown`'s tables, the figures of small effects, and the anchor,
    rate-distortion-complexity and decomposition sections when there are such figures."""
    md = _markdown(root, grouped.base, spec, rows, grouped.groups, skipped, paths["png"].name, columns, replicates,
                   failed)
    if "delta" in paths:  # the two figures of small effects, after the RD curves
        rd = f"![RD curves]({paths['png'].name})\n"
        md = md.replace(rd, rd + "\n" + FIGURES_MD + "\n", 1)
    if ref is not None:
        md += (f"\n## Anchor\n\nEvery group's curve is also compared with the anchor `{ref['name']}` "
               f"(BD-rate / BD-PSNR, pchip, over the overlapping range): {ref.get('description', '')}\n")
    if "rdc" in paths:
        md += (f"\n## Rate-distortion-complexity\n\nPSNR of each group interpolated (linear in log bpp) "
               f"at one rate all groups cover, against decoder KMACs/pixel (h_s + context + g_s, "
               f"codecx.metrics.complexity).\n\n![RD-complexity]({paths['rdc'].name})\n")
    return md + decomposition


def _anchor_cells(anchor: Any, rows: List[Dict[str, Any]], groups: Dict[str, List[Run]],
                  data_override: Optional[Dict[str, Any]], cache: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve the anchor (jpeg / webp on the evaluation images: the first run's validation data
    or `data_override`) and add each group's BD-rate / BD-PSNR against it to its row."""
    from codecx.metrics.anchors import CLASSICAL, resolve_anchor

    images = None
    if isinstance(anchor, str) and anchor.lower() in CLASSICAL:
        run = next(r for rs in groups.values() for r in rs)
        cfg = run.dir / ".hydra" / "config.yaml"
        node = OmegaConf.load(cfg).get("data") if cfg.is_file() else None  # other keys may need Hydra
        data = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        images = _val_images(dict(data, **(data_override or {})), cache)
    ref = resolve_anchor(anchor, images)
    for row, (g, rs) in zip(rows, groups.items()):
        if not rs:  # every run of the group incomplete
            continue
        # pchip; a group of one RD point gets the one-point form at it (codecx.compare.bd_pair)
        pair = bd_pair(ref, merge_results(g, [r.results for r in rs]), "pchip", msssim=False, one_point=True)
        if pair.error is None:
            row["anchor_bd_rate"] = _fmt("bd_rate", pair.values["bd_rate_pchip"])
            row["anchor_bd_psnr"] = _fmt("bd_psnr", pair.values["bd_psnr_pchip"])
            notes = pair.notes
        else:
            notes = [f"BD vs {ref['name']} undefined: {pair.error}"]
        if notes:
            row["notes"] = " / ".join([*filter(None, [row.get("notes")]), *(f"vs {ref['name']}: {n}" for n in notes)])
    return ref


def _by_replicate(runs: Sequence[Run], key: Optional[str]) -> Dict[Optional[str], List[Run]]:
    """{replicate value: runs} in value order ({None: runs} without a replicate key)."""
    if key is None:
        return {None: list(runs)}
    out: Dict[Optional[str], List[Run]] = {}
    for r in sorted(runs, key=lambda r: _num(r.value(key, ""))):
        out.setdefault(r.value(key), []).append(r)
    return out


def _replicate_columns(key: str) -> List[Tuple[str, str]]:
    """COLUMNS with each BD column's per-replicate values after it."""
    cols = []
    for k, title in COLUMNS:
        cols.append((k, title.replace("BD-", "mean BD-", 1) if k.startswith("bd_") else title))
        if k.startswith("bd_"):
            cols.append((f"{k}_each", f"{title.split(' (')[0]} by {key}"))
    return cols


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


# per-run columns of report.md shown when some run has them (eval.py / final evaluation results)
RUN_EXTRA = (("lpips", "LPIPS", 4), ("fid", "FID", 2), ("kid", "KID", 4), ("hf_ratio", "HF ratio", 3))
HF_NOTE = ("HF ratio: power of the decoded images above half the Nyquist frequency over the originals' "
           "(luma, mean over the images; codecx.metrics.realism, no pretrained network): below 1 = "
           "detail smoothed away (MSE training), towards 1 = detail restored (a working GAN); noise "
           "raises it too, so read it with PSNR / FID, not as a realism score.")


def _markdown(root: Path, base: str, spec: str, rows: List[Dict[str, Any]],
              groups: Dict[str, List[Run]], skipped: List[str], png: str,
              columns: Sequence[Tuple[str, str]] = COLUMNS, replicates: Optional[str] = None,
              failed: Sequence[Tuple[str, str]] = ()) -> str:
    """report.md: the BD table, how it was computed, the plot, the per-run RD points and the
    failed jobs (`failed`: (job folder, reason))."""
    table = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    extra = [c for c in RUN_EXTRA if any(c[0] in r.results["results"] for rs in groups.values() for r in rs)]
    run_rows = ["| group | λ | bpp | bpp est. | PSNR dB | MS-SSIM | " + "".join(f"{t} | " for _, t, _ in extra)
                + "images | steps |", "|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|"]
    for g, rs in groups.items():
        for r in sorted(rs, key=lambda r: (_num(r.value(replicates, "")) if replicates else 0,
                                           _num(r.value("lmbda", "")))):
            res = r.results["results"]
            fmt = lambda k, d: "n/a" if res.get(k, [None])[0] is None else f"{res[k][0]:.{d}f}"  # noqa: E731
            label = f"{g}, {replicates}={r.value(replicates)}" if replicates else g
            steps = "?" if r.step < 0 else (f"{r.step}" + (f" of {r.max_steps}" if r.max_steps > 0 else ""))
            if r.incomplete:
                steps += " **incomplete**"
            run_rows.append(f"| {label} | {r.value('lmbda')} | {fmt('bpp', 4)} | "
                            f"{fmt('bpp_est', 4)} | {fmt('psnr-rgb', 2)} | {fmt('ms-ssim', 4)} | "
                            + "".join(f"{fmt(k, d)} | " for k, _, d in extra)
                            + f"{(r.results.get('images') or ['?'])[0]} | {steps} |")
    text = [f"# Sweep report: {root}", "",
            f"Baseline: `{spec}` (group `{base}`). Runs are grouped by the configuration each run used "
            "(its .hydra/config.yaml, else its checkpoint's): the settings that differ between runs, "
            "except `lmbda` and `seed`. A run whose last.ckpt stopped before its trainer.max_steps is "
            "marked incomplete and left out of the curves and BD figures unless --include-incomplete.",
            "bpp counts every byte of real codecx files (header included); PSNR is on 8-bit RGB.",
            "BD-rate: Bjøntegaard delta with log rate over the overlapping PSNR range (negative = fewer "
            "bits than the baseline at equal quality); BD-PSNR over the overlapping log-rate range. "
            "pchip always; cubic (VCEG-M33) only when both curves have at least 4 points.",
            "BD-rate per image: each evaluation image's own RD curve over the lambdas against the baseline's "
            "on the same image (pchip), mean ± t_{0.975,n-1} standard errors over the images (a 95% Student-t "
            "interval; pooled over the pairs with replicates): the paired spread, i.e. whether a difference "
            "is more than image-to-image scatter. Images without a per-image BD-rate (non-monotonic or "
            "non-overlapping curves, evaluated on one side only) are dropped and named.",
            *([f"Replicates: `{replicates}`. Groups ignore it; a group's BD figures are the mean over its "
               f"{replicates} values, each against the baseline run with the same {replicates}; the baseline "
               f"row is the noise band (each other {replicates} of the baseline against its first)."]
              if replicates else []), "",
            *table, "", f"![RD curves]({png})", "", "## Runs", "", *run_rows, "",
            *([HF_NOTE, ""] if any(k == "hf_ratio" for k, _, _ in extra) else [])]
    if skipped:
        text += ["## Skipped", "", *[f"- {s}" for s in skipped], ""]
    if failed:
        text += ["## Failed jobs", "", "Left out of every curve and BD figure (the other jobs ran):", "",
                 *[f"- **failed** `{name}`: {why}" for name, why in failed], ""]
    return "\n".join(text)


def _val_images(data: Dict[str, Any], cache: Dict[str, Any]):
    """The validation images of a data config, loaded once per distinct data setting."""
    key = json.dumps(data_key(data), sort_keys=True)
    if key not in cache:
        dm = instantiate(data)
        dm.setup("validate")
        cache[key] = dataset_images(dm.val_set)
    return cache[key]
