"""Sweep report: group the runs of a Hydra multirun by the configuration each run used (the
settings that differ between runs, except `lmbda` and `seed`), evaluate
each run from real bitstreams (or reuse its results.json), and tabulate BD-rate / BD-PSNR
(Bjøntegaard, VCEG-M33) of every group against a baseline group, with one RD plot."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.utils import instantiate
from omegaconf import OmegaConf

from codecx.eval.load import load_codec
from codecx.eval.loop import dataset_images, evaluate_codecs
from codecx.eval.results import data_key, data_label, results_dict, write_results
from codecx.compare import Arm, Curve, bd_pair, compare, fmt as _fmt, merge_results
from codecx.metrics.bdrate import read_per_image
from codecx.metrics.complexity import plot_rdc
from codecx.metrics.decompose import DECOMPOSE_KEYS, decomposition_section
from codecx.metrics.rdplot import plot_bd_bars, plot_delta, plot_rd

GROUP_EXCLUDE = {"lmbda", "seed"}
# settings that do not change what a run trains or how it is evaluated: never split groups
NOT_GROUPED = ("hydra", "resume", "sweep_report", "logger", "callbacks", "checkpoint", "eval",
               "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
               "data.num_workers", "data.pin_memory")


@dataclass
class Run:
    """One job of a multirun: its folder, command-line overrides, Hydra group choices, and the
    configuration it used (flattened, resolved; `raw`: the unresolved leaves, e.g. '${alpha}')."""

    dir: Path
    overrides: Dict[str, str]
    choices: Dict[str, str] = field(default_factory=dict)
    results: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict)
    step: int = -1        # last.ckpt's global step (-1: unknown)
    max_steps: int = -1   # trainer.max_steps it was run with (-1: unknown or unlimited)
    per_image: List[Dict[str, str]] = field(default_factory=list)  # its per_image.csv rows

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    @property
    def incomplete(self) -> bool:
        """last.ckpt (or the final evaluation) stopped before trainer.max_steps: a killed run."""
        return self.max_steps > 0 and 0 <= self.step < self.max_steps

    def value(self, key: str, default: str = "?") -> str:
        """A setting as text: the override as written, else the used config's value."""
        if key in self.overrides:
            return self.overrides[key]
        if self.config is not None and key in self.config:
            return _text(self.config[key])
        return self.choices.get(key, default)


def _text(v: Any) -> str:
    return "null" if v is None else str(v)


def _parse_overrides(lines: Sequence[str]) -> Dict[str, str]:
    """{'quantizer': 'ste', 'lmbda': '0.0018', ...} from Hydra's overrides.yaml (hydra.* dropped)."""
    out = {}
    for line in map(str, lines):
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra."):
            out[key] = value
    return out


def _flatten(node: Any, prefix: str, out: Dict[str, Any], raw: Dict[str, Any]) -> None:
    """Leaves of an OmegaConf node by dotted key: resolved where possible (a leaf that needs a
    Hydra-only resolver keeps its text), the unresolved text in `raw`."""
    from omegaconf import DictConfig, ListConfig

    for k in node.keys():
        key = f"{prefix}{k}"
        child = node._get_node(k)
        raw_value = child._value() if child is not None else None
        try:
            v = node[k]
        except Exception:  # noqa: BLE001 - ${hydra:...} outside Hydra
            out[key], raw[key] = str(raw_value), str(raw_value)
            continue
        if isinstance(v, DictConfig):
            if len(v) == 0:
                out[key] = raw[key] = "{}"
            _flatten(v, f"{key}.", out, raw)
        elif isinstance(v, ListConfig):
            try:
                out[key] = str(OmegaConf.to_container(v, resolve=True))
            except Exception:  # noqa: BLE001
                out[key] = str(OmegaConf.to_container(v, resolve=False))
            raw[key] = out[key]
        else:
            out[key], raw[key] = v, raw_value


def _ckpt_info(ckpt: Path) -> Tuple[int, Optional[Dict[str, Any]]]:
    """(global step, codecx_config) of a train.py checkpoint, read memory-mapped; (-1, None)."""
    if not ckpt.is_file():
        return -1, None
    try:
        import torch

        d = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return int(d.get("global_step", -1)), d.get("codecx_config")
    except Exception:  # noqa: BLE001 - damaged or foreign: the report evaluates what it can
        return -1, None


def load_run_config(run: Run) -> None:
    """Fill `run.config` / `run.raw` from .hydra/config.yaml (else the checkpoint's
    codecx_config), and `run.step` / `run.max_steps`."""
    from codecx.config.schema import register_configs

    register_configs()  # codecx's resolvers
    step, ckpt_config = _ckpt_info(run.ckpt)
    f = run.dir / ".hydra" / "config.yaml"
    flat: Dict[str, Any] = {}
    raw: Dict[str, Any] = {}
    if f.is_file():
        _flatten(OmegaConf.load(f), "", flat, raw)
    elif isinstance(ckpt_config, dict):
        _flatten(OmegaConf.create(ckpt_config), "", flat, raw)
    run.config, run.raw = (flat or None), raw
    results_step = (run.results or {}).get("step") if isinstance(run.results, dict) else None
    run.step = step if step >= 0 else (int(results_step) if isinstance(results_step, int) else -1)
    ms = flat.get("trainer.max_steps", run.overrides.get("trainer.max_steps"))
    try:
        run.max_steps = int(ms) if ms is not None else -1
    except (TypeError, ValueError):
        run.max_steps = -1


def find_runs(root: Path) -> List[Run]:
    """Every run folder under `root` (one with .hydra/overrides.yaml), sorted by path."""
    runs = []
    for f in sorted(root.rglob(".hydra/overrides.yaml")):
        run_dir = f.parent.parent
        hydra_yaml = f.parent / "hydra.yaml"
        choices = {}
        if hydra_yaml.is_file():
            choices = OmegaConf.to_container(OmegaConf.load(hydra_yaml)).get("hydra", {}) \
                .get("runtime", {}).get("choices", {}) or {}
        overrides = _parse_overrides(OmegaConf.to_container(OmegaConf.load(f)) or [])
        runs.append(Run(run_dir, overrides, {k: str(v) for k, v in choices.items()}))
    return runs


def _knobs() -> set:
    """Top-level settings that codecx/conf interpolates into groups (`alpha` -> reg.cse.alpha):
    a run's effective value is where it is used, so the top-level copy never groups."""
    import re

    from codecx.conf import CONF_DIR

    names = set()
    for p in Path(CONF_DIR).rglob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Za-z_]\w*)\}", p.read_text(errors="ignore")))
    return names


def _grouped_keys(runs: Sequence[Run], exclude: Sequence[str]) -> List[str]:
    """Settings of the used configurations that differ between runs (lmbda, seed, `exclude`,
    bookkeeping and interpolated top-level knobs left out)."""
    import re

    skip = GROUP_EXCLUDE | set(exclude)
    knobs = _knobs() | {m for r in runs for v in r.raw.values() if isinstance(v, str)
                        for m in re.findall(r"\$\{([A-Za-z_]\w*)\}", v)}
    keys = sorted({k for r in runs for k in r.config})
    out = []
    for k in keys:
        if k in skip or (k in knobs and "." not in k) or any(k == p or k.startswith(p + ".") for p in NOT_GROUPED):
            continue
        if any(isinstance(r.raw.get(k), str) and any("${" + x + "}" in r.raw[k] for x in skip) for r in runs):
            continue  # follows lmbda or seed (data.seed, a base checkpoint per lambda): not a group key
        if len({_text(r.config.get(k, "<absent>")) for r in runs}) > 1:
            out.append(k)
    return out


def _label_tokens(runs: Sequence[Run], keys: Sequence[str]) -> Dict[str, str]:
    """For each differing key, how a run's value is named in its group label: `reg=cse` when
    the group choice alone explains it, `alpha=1` when it is an interpolated knob, else key=value."""
    import re

    out = {}
    for k in keys:
        top = k.split(".", 1)[0]
        choices = {r.choices.get(top) for r in runs}
        if None not in choices and len(choices) > 1 and all(
                len({_text(r.config.get(k, "<absent>")) for r in runs if r.choices.get(top) == c}) == 1
                for c in choices):
            out[k] = f"choice:{top}"
            continue
        knob = {m.group(1) for r in runs if isinstance(r.raw.get(k), str)  # ${alpha}, ${codecx_or:${alpha},0.0}
                for m in [re.fullmatch(r"\$\{(?:codecx_or:\$\{)?([A-Za-z_]\w*)\}(?:,[^{}]*\})?", r.raw[k])] if m}
        out[k] = f"knob:{knob.pop()}" if len(knob) == 1 else f"key:{k}"
    return out


def _written(r: Run, key: str) -> str:
    """`key`'s setting in a run's label as the user wrote it: the override of `key` itself, else
    the override of its nearest enclosing group (`transform=lpc` for `transform.lpc.hidden`), else
    key=value from the used configuration."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        k = ".".join(parts[:i])
        if k in r.overrides:
            return f"{k}={r.overrides[k]}"
    return f"{key}={_text(r.config[key])}"


def group_runs(runs: Sequence[Run], exclude: Sequence[str] = ()) -> Dict[str, List[Run]]:
    """Runs grouped by the configuration each one used (`Run.config`: .hydra/config.yaml or the
    checkpoint's): the settings that differ between runs, except lmbda, seed and `exclude`;
    labelled `group=choice` / `knob=value` / `key=value`. Runs without a known configuration
    (results.json only) are grouped by their overrides as written, except lmbda (and `exclude`)."""
    if runs and all(r.config for r in runs):
        keys = _grouped_keys(runs, exclude)
        how = _label_tokens(runs, keys)
        groups: Dict[str, List[Run]] = {}
        written: Dict[str, set] = {}  # group -> its runs' labels from the overrides as written
        for r in runs:
            tokens: List[str] = []
            short: List[str] = []
            for k in keys:
                if k not in r.config:
                    continue  # e.g. reg.cse.alpha of a reg=none run
                kind, _, name = how[k].partition(":")
                tok = (f"{name}={r.choices[name]}" if kind == "choice" else
                       f"{name}={_text(r.config[k])}" if kind == "knob" else f"{k}={_text(r.config[k])}")
                for t, ts in ((tok, tokens), (_written(r, k) if kind == "key" else tok, short)):
                    if t not in ts:
                        ts.append(t)
            label = ",".join(tokens) or "all"
            groups.setdefault(label, []).append(r)
            written.setdefault(label, set()).add(",".join(short) or "all")
        # name each group by its overrides as written (transform=lpc,transform.lpc.params=predicted
        # rather than every transform.lpc.* value) where that names every group alike and apart
        names = {g: next(iter(w)) for g, w in written.items() if len(w) == 1}
        if len(names) == len(groups) and len(set(names.values())) == len(names):
            return {names[g]: rs for g, rs in groups.items()}
        return groups
    keys = sorted({k for r in runs for k in r.overrides} - {"lmbda"} - set(exclude))
    varying = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    groups = {}
    for r in runs:
        label = ",".join(f"{k}={r.overrides[k]}" for k in varying if k in r.overrides) or "all"
        groups.setdefault(label, []).append(r)
    return groups


def parse_baseline(spec: str) -> Dict[str, str]:
    """'reg=none' or 'reg=none,quantizer=noise' -> {key: value}."""
    pairs = [p for p in spec.split(",") if p]
    if not pairs or any("=" not in p for p in pairs):
        raise ValueError(f"--baseline {spec!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. reg=none")
    return dict(p.split("=", 1) for p in pairs)


def find_baseline(groups: Dict[str, List[Run]], spec: str) -> str:
    """The label of the one group that has the baseline's KEY=VALUE pairs: in its label, or in
    every run's overrides, group choices or used configuration."""
    want = parse_baseline(spec)

    def has(label: str, runs: List[Run], k: str, v: str) -> bool:
        if f"{k}={v}" in label.split(","):
            return True
        return all(_same(r.overrides.get(k, r.choices.get(k, r.value(k, "<absent>"))), v) for r in runs)

    match = [g for g, runs in groups.items() if all(has(g, runs, k, v) for k, v in want.items())]
    if len(match) != 1:
        raise ValueError(f"--baseline {spec}: {'no' if not match else len(match)} groups match "
                         f"(exactly one must); groups: {'; '.join(groups)}")
    return match[0]


def _same(a: Any, b: Any) -> bool:
    """Config values equal as text or as numbers ('1' and 1.0)."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


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
        want = data_key(data_override) if data_override is not None else _own_data(run)
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
    res = results_dict(run.dir.name, points, f"{config['model']['name']}, lmbda={config['lmbda']}, "
                       f"{len(images)} image(s) ({data_label(data)})", checkpoints=[str(run.ckpt)],
                       lmbda=[config["lmbda"]], images=[len(images)], data=data_key(data))
    write_results(results_path.parent, res, rows)
    return res


def _own_data(run: Run) -> Optional[Dict[str, Any]]:
    """The data key of a run's own validation images (its .hydra/config.yaml), None if unknown."""
    f = run.dir / ".hydra" / "config.yaml"
    if not f.is_file():
        return None
    data = OmegaConf.to_container(OmegaConf.load(f)).get("data")
    return data_key(data) if isinstance(data, dict) else None


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
    them are re-evaluated)."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{multirun_dir}: no such directory (a Hydra multirun folder, e.g. runs/sweep/NAME)")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"{multirun_dir}: no runs found (no */.hydra/overrides.yaml below it)")
    from codecx.lit.sweep_report import job_failure

    # jobs that stopped with an error (train.py records why): named in the report, never in a curve
    failed = [(str(r.dir.relative_to(root)), why) for r in runs if (why := job_failure(r.dir))]
    runs = [r for r in runs if not job_failure(r.dir)]
    if not runs:
        raise ValueError(f"{multirun_dir}: every job failed: " + "; ".join(f"{n}: {w}" for n, w in failed))
    data_override = None if data_val_dir is None else {
        "source": "folder", "val_dir": str(data_val_dir), "train_dir": None, "val_crop_size": None,
        "max_val_images": None}
    skipped, cache = [], {}
    for r in runs:
        where = (Path(eval_dir) / r.dir.relative_to(root) if eval_dir else r.dir) / "results.json"
        r.results = run_results(r, where, data_override, progress, cache, decompose, lpips, fid)
        r.per_image = read_per_image(where.parent / "per_image.csv")
        if r.results is None:
            skipped.append(f"{r.dir.relative_to(root)}: no checkpoints/last.ckpt and no results.json")
    runs = [r for r in runs if r.results is not None]
    if not runs:
        raise ValueError(f"{multirun_dir}: none of the runs has a checkpoint or results: " + "; ".join(skipped))
    for r in runs:
        load_run_config(r)
    groups = group_runs(runs, exclude=[replicates] if replicates else ())
    base = find_baseline(groups, baseline) if baseline else sorted(groups)[0]
    baseline = baseline or "not set: the first group"
    groups = {base: groups.pop(base), **groups}  # baseline first
    # the runs each group's curve is made of: killed runs only with include_incomplete
    used = {g: [r for r in rs if include_incomplete or not r.incomplete] for g, rs in groups.items()}
    # one curve per group, or per (group, replicate value) with replicates
    split = {g: _by_replicate(rs, replicates) for g, rs in used.items() if rs}
    curves = {(g, v): merge_results(g if v is None else f"{g},{replicates}={v}", [r.results for r in rs])
              for g, by in split.items() for v, rs in by.items()}
    # the BD figures of every group against the baseline (codecx.compare): per replicate pair
    # with replicates, and the per-image band from the runs' per_image.csv rows
    arms = {g: Arm(g, {v: Curve(curves[g, v], [row for r in rs for row in r.per_image]) for v, rs in by.items()})
            for g, by in split.items()}
    compared = {c.name: c for c in compare(arms[base], [a for g, a in arms.items() if g != base],
                                           replicate_key=replicates or "seed")} if base in arms else {}
    rows = []
    for g, rs in groups.items():
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
    ref = None if anchor is None else _anchor_cells(anchor, rows, used, data_override, cache)
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "rd.png"}
    plot_rd(list(curves.values()), paths["png"], title=f"{root.name}: baseline {base}",
            anchors=[ref] if ref is not None else (), baseline=base, replicate_key=replicates)
    if len(compared) > 1:  # small effects: PSNR minus the baseline's at equal rate; BD-rate bars
        paths["delta"] = plot_delta(arms[base], [a for g, a in arms.items() if g != base], out / "delta_psnr.png",
                                    title=f"{root.name}: PSNR minus the baseline's at equal rate")
        paths["bars"] = plot_bd_bars(list(compared.values()), out / "bd_rate.png",
                                     title=f"{root.name}: BD-rate against the baseline")
    # rate-distortion-complexity (Yang & Mandt 2023): PSNR at a matched rate vs decoder KMACs/px
    rdc = plot_rdc([merge_results(g, [r.results for r in rs]) for g, rs in used.items() if rs],
                   out / "rdc.png", title=f"{root.name}: PSNR at matched rate vs decoder complexity")
    if rdc is not None:
        paths["rdc"] = rdc
    columns = COLUMNS if replicates is None else _replicate_columns(replicates)
    if any("hf_ratio" in r for r in rows):  # before `notes`
        columns = [*columns[:-1], ("hf_ratio", "HF ratio"), columns[-1]]
    if ref is not None:  # before `notes`
        columns = [*columns[:-1], ("anchor_bd_rate", f"BD-rate % vs {ref['name']} (pchip)"),
                   ("anchor_bd_psnr", f"BD-PSNR dB vs {ref['name']} (pchip)"), columns[-1]]
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k, _ in columns])
        w.writeheader()
        w.writerows(rows)
    md = _markdown(root, base, baseline, rows, groups, skipped, paths["png"].name, columns, replicates, failed)
    if "delta" in paths:  # the two figures of small effects, after the RD curves
        rd = f"![RD curves]({paths['png'].name})\n"
        md = md.replace(rd, rd + "\n" + FIGURES_MD + "\n", 1)
    if ref is not None:
        md += (f"\n## Anchor\n\nEvery group's curve is also compared with the anchor `{ref['name']}` "
               f"(BD-rate / BD-PSNR, pchip, over the overlapping range): {ref.get('description', '')}\n")
    if rdc is not None:
        md += (f"\n## Rate-distortion-complexity\n\nPSNR of each group interpolated (linear in log bpp) "
               f"at one rate all groups cover, against decoder KMACs/pixel (h_s + context + g_s, "
               f"codecx.metrics.complexity).\n\n![RD-complexity]({rdc.name})\n")
    dec = decomposition_section([merge_results(g, [r.results for r in rs]) for g, rs in used.items() if rs],
                                out / "decomposition.png")  # runs evaluated with metrics.decompose
    if dec:
        md += dec
        paths["decomposition"] = out / "decomposition.png"
    paths["md"].write_text(md)
    return paths


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
