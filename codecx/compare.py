"""Compare arms with a baseline: BD-rate / BD-PSNR (Bjøntegaard, VCEG-M33; pchip and cubic), the
MS-SSIM BD-rate, the per-image band (mean ± t·SE over the images) and, with replicates (seeds),
the mean over seed pairs and the baseline's seed band. Reads eval.py / `codecx report` folders
(`results.json`, `per_image.csv`; a sweep's folders named by their overrides with `load_sweep`);
`codecx compare`, `codecx report` and the studies' table scripts all use `compare`.

    from codecx.compare import compare, load_arm
    rows = compare(load_arm("runs/eval/control"), [load_arm("runs/eval/lpc")])
    print(markdown(rows))
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from codecx.metrics.bdrate import (PerImageBD, bd_methods, bd_rate_per_image, get_metric,
                                   load_results, point_deltas, read_per_image)

PathLike = Union[str, Path]
#: the BD figures of a row, in table order: key -> title
BD_KEYS = {"bd_rate_pchip": "BD-rate % (pchip)", "bd_psnr_pchip": "BD-PSNR dB (pchip)",
           "bd_rate_cubic": "BD-rate % (cubic)", "bd_psnr_cubic": "BD-PSNR dB (cubic)",
           "bd_rate_msssim": "BD-rate % MS-SSIM (pchip)"}
PER_IMAGE_TITLE = "BD-rate % per image (pchip, ± t·SE, 95%)"


@dataclass
class Curve:
    """One RD curve: CompressAI-layout results (`name`, `results: {bpp, psnr-rgb, ...}`) and the
    per-image rows it was measured from (eval.py's per_image.csv; [] when absent)."""

    results: Dict[str, Any]
    per_image: List[Dict[str, str]] = field(default_factory=list)

    @property
    def points(self) -> int:
        return len(self.results["results"]["bpp"])

    def mean(self, key: str) -> float:
        """The mean of a results series over its points (None values left out; NaN if none)."""
        v = [x for x in self.results["results"].get(key, []) if x is not None]
        return sum(v) / len(v) if v else float("nan")


@dataclass
class Arm:
    """A named configuration: one curve, or one per replicate (`{seed value: Curve}`; the key is
    None without replicates). Replicates pair with the baseline's curve of the same key."""

    name: str
    replicates: Dict[Optional[str], Curve]

    @property
    def curve(self) -> Curve:
        """All replicates pooled into one curve (the points of every replicate, by bpp)."""
        curves = list(self.replicates.values())
        if len(curves) == 1:
            return curves[0]
        return Curve(merge_results(self.name, [c.results for c in curves]),
                     [r for c in curves for r in c.per_image])


@dataclass
class Row:
    """One arm against the baseline. `values`: BD figures (BD_KEYS; the mean over replicate
    pairs); `each`: every pair's value ((label, value), e.g. ('seed=1', -0.52)); `per_image`:
    the per-image band pooled over the pairs (None when not asked for); `notes`: overlap
    warnings and why a figure is undefined; `error`: why BD on PSNR is undefined (one pair)."""

    name: str
    baseline: bool
    curve: Curve
    values: Dict[str, float] = field(default_factory=dict)
    each: Dict[str, List[Tuple[str, float]]] = field(default_factory=dict)
    per_image: Optional[PerImageBD] = None
    notes: List[str] = field(default_factory=list)
    error: Optional[str] = None
    pairs: int = 0

    @property
    def bd_rate(self) -> float:
        """BD-rate % (pchip) on PSNR; NaN when undefined, 0 for the baseline without replicates."""
        return self.values.get("bd_rate_pchip", 0.0 if self.baseline and not self.pairs else math.nan)

    def per_image_text(self) -> str:
        """The per-image band as the tables print it ('-' when not computed); pooled over
        several replicate pairs, its count is of image-pairs."""
        return "-" if self.per_image is None else self.per_image.text("image-pairs" if self.pairs > 1 else "images")


# ---------------------------------------------------------------- loading
def merge_results(name: str, results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One CompressAI-layout curve from several results: the metrics all have, sorted by bpp."""
    keys = [k for k in results[0]["results"] if all(k in r["results"] for r in results)]
    pts = [{k: r["results"][k][i] for k in keys} for r in results for i in range(len(r["results"]["bpp"]))]
    pts.sort(key=lambda p: p["bpp"])
    return {"name": name, "description": f"{len(pts)} RD points of {len(results)} run(s)",
            "bpp_source": results[0].get("bpp_source", "real bitstream"),
            "results": {k: [p[k] for p in pts] for k in keys}}


def load_curve(*paths: PathLike, name: Optional[str] = None) -> Curve:
    """A curve from one or more of: a folder with results.json (and per_image.csv), a folder whose
    sub-folders hold them (one run each, e.g. `codecx report --eval-dir`: merged into one curve),
    a results JSON file, or a packaged anchor name (`mbt2018-mean`)."""
    if not paths:
        raise ValueError("load_curve: no path given")
    results, rows = [], []
    for p in map(Path, paths):
        if p.is_dir():
            files = [p / "results.json"] if (p / "results.json").is_file() else sorted(p.glob("*/results.json"))
            if not files:
                raise FileNotFoundError(f"{p}: no results.json in it or in its sub-folders (an eval.py or "
                                        "`codecx report --eval-dir` output folder)")
        else:
            files = [p]
        for f in files:
            results.append(load_results(f if f.is_file() else str(f)))
            rows += read_per_image(f.parent / "per_image.csv") if f.name == "results.json" else []
    label = name or (results[0]["name"] if len(paths) == 1 and not Path(paths[0]).is_dir() else Path(paths[0]).name)
    merged = results[0] if len(results) == 1 else merge_results(label, results)
    return Curve(dict(merged, name=label), rows)


def load_arm(*paths: PathLike, name: Optional[str] = None,
             replicates: Optional[Mapping[str, Union[PathLike, Sequence[PathLike]]]] = None) -> Arm:
    """An arm of one curve (`load_curve(*paths)`), or with `replicates` ({seed value: path(s)})
    one curve per replicate."""
    if replicates is not None:
        curves = {str(k): load_curve(*([v] if isinstance(v, (str, Path)) else v), name=name)
                  for k, v in replicates.items()}
        label = name or next(iter(curves.values())).results["name"]
        return Arm(label, curves)
    curve = load_curve(*paths, name=name)
    return Arm(curve.results["name"], {None: curve})


def overrides_of(name: str) -> Dict[str, str]:
    """A run folder's Hydra overrides from its name (`alpha=1,lmbda=0.0018,seed=1`, as Hydra's sweep
    folders and `codecx report --eval-dir` name them; a list value such as `transform=[a,b]` whole)."""
    out, parts, depth = {}, [""], 0
    for c in name:  # split at the commas outside brackets
        depth += (c in "[{(") - (c in "]})")
        if c == "," and depth == 0:
            parts.append("")
        else:
            parts[-1] += c
    cut = len(name) >= 200 and re.search(r"-[0-9a-f]{8}$", name)  # codecx.config.schema.run_name's cut + hash
    for part in parts:
        key, sep, value = part.partition("=")
        if cut or not sep or not key:
            raise ValueError(f"{name!r}: {part!r} is not KEY=VALUE; load_sweep reads folders named by their "
                             "full override list (k=v,k=v), not cut or hashed names: load those with load_arm")
        out[key] = value
    return out


def load_sweep(folder: PathLike, exclude: Sequence[str] = ("lmbda",), replicate_key: str = "seed",
               where: Optional[Callable[[str], bool]] = None) -> Dict[str, Arm]:
    """{name: Arm} from a folder of result folders named by their overrides (`codecx report
    --eval-dir`): runs grouped by every override except `exclude` and `replicate_key`, whose
    values are a group's replicates; a group is named by the overrides that differ between the
    runs (`alpha=1,reg=none`, keys sorted); `where(folder name)` keeps only some runs."""
    runs = [f.parent for f in sorted(Path(folder).glob("*/results.json")) if where is None or where(f.parent.name)]
    if not runs:
        raise FileNotFoundError(f"{folder}: no <overrides>/results.json in it (a `codecx report --eval-dir` folder)")
    ov = {d: overrides_of(d.name) for d in runs}
    keys = sorted({k for o in ov.values() for k in o} - set(exclude) - {replicate_key})
    differ = [k for k in keys if len({o.get(k) for o in ov.values()}) > 1]
    groups: Dict[str, Dict[Optional[str], List[Path]]] = {}
    for d, o in ov.items():
        label = ",".join(f"{k}={o[k]}" for k in differ if k in o) or Path(folder).name
        groups.setdefault(label, {}).setdefault(o.get(replicate_key), []).append(d)
    out = {}
    for label, reps in groups.items():
        if None in reps and len(reps) > 1:
            raise ValueError(f"{folder}: group {label!r} has runs with and without {replicate_key}=: "
                             f"give every run a {replicate_key} or none")
        seeds = {str(k): v for k, v in reps.items()}
        out[label] = (load_arm(*reps[None], name=label) if None in reps
                      else load_arm(name=label, replicates=dict(sorted(seeds.items()))))
    return out


def as_arm(x: Union[Arm, Curve, Mapping[str, Any], PathLike]) -> Arm:
    """An Arm from an Arm, a Curve, a results dict, or a path / packaged anchor name."""
    if isinstance(x, Arm):
        return x
    if isinstance(x, Curve):
        return Arm(x.results.get("name", "curve"), {None: x})
    if isinstance(x, Mapping):
        d = load_results(x)
        return Arm(d["name"], {None: Curve(d)})
    return load_arm(x)


# ---------------------------------------------------------------- one pair
def curve_names(e: Exception) -> str:
    """bdrate's 'anchor: ...' / 'test: ...' messages in a comparison's terms."""
    return str(e).replace("anchor:", "baseline curve:", 1).replace("test:", "this curve:", 1)


def _finite(curve: Dict[str, Any], metric: str) -> bool:
    try:
        return all(v is not None and math.isfinite(v) for v in get_metric(curve, metric).tolist())
    except KeyError:
        return False


@dataclass
class Pair:
    """BD figures of one test curve against one baseline curve."""

    values: Dict[str, float]
    notes: List[str]
    error: Optional[str] = None  # why BD on PSNR is undefined


def bd_pair(baseline: Dict[str, Any], test: Dict[str, Any], methods: str = "both", msssim: bool = True,
            one_point: bool = False, metric: str = "psnr-rgb") -> Pair:
    """BD-rate / BD-PSNR of `test` against `baseline` on `metric` (`methods`: 'both' = pchip, and
    cubic when both curves have >= 4 points; or 'pchip'; the bd_psnr_* keys hold the BD-quality
    on another metric, MS-SSIM in dB), the MS-SSIM BD-rate (pchip) when `metric` is PSNR, both
    have finite MS-SSIM and `msssim`. `one_point`: a one-point test curve gets the one-point
    form (rate change at its PSNR / PSNR change at its rate on the baseline's pchip curve, never
    extrapolated) in the pchip columns."""
    values: Dict[str, float] = {}
    if one_point and len(test["results"]["bpp"]) == 1:
        name = baseline.get("name", "baseline")
        notes = [f"one RD point: rate change at its PSNR / PSNR change at its rate on {name}'s pchip curve"]
        d = point_deltas(baseline, {k: v[0] for k, v in test["results"].items()})
        notes += [f"{what} outside {name}'s range (not extrapolated)" for what, key in
                  (("its PSNR", "delta_rate"), ("its rate", "delta_psnr")) if d[key] != d[key]]
        return Pair({"bd_rate_pchip": d["delta_rate"], "bd_psnr_pchip": d["delta_psnr"]}, notes)
    notes: List[str] = []
    error = None
    try:
        res, notes = bd_methods(baseline, test, metric, methods)
        for m, r in res.items():
            values[f"bd_rate_{m}"], values[f"bd_psnr_{m}"] = r.bd_rate, r.bd_psnr
    except ValueError as e:
        error = curve_names(e)
        notes.append(f"BD on {'PSNR' if metric == 'psnr-rgb' else metric} undefined: {error}")
    if msssim and metric == "psnr-rgb" and _finite(baseline, "ms-ssim") and _finite(test, "ms-ssim"):
        try:
            res, _ = bd_methods(baseline, test, "ms-ssim", "pchip")
            values["bd_rate_msssim"] = res["pchip"].bd_rate
        except ValueError as e:
            notes.append(f"BD on MS-SSIM undefined: {curve_names(e)}")
    return Pair(values, notes, error)


def per_image_band(pairs: Sequence[Tuple[Sequence[Mapping[str, str]], Sequence[Mapping[str, str]]]],
                   metric: str = "psnr-rgb") -> PerImageBD:
    """BD-rate % (pchip) image by image of each (baseline rows, test rows) pair, pooled over the
    pairs (mean ± t_{0.975,n-1} SE); dropped images are named, with the pair's number when pooled."""
    values: List[float] = []
    skipped: List[str] = []
    for i, (base, test) in enumerate(pairs):
        one = bd_rate_per_image(base, test, metric)
        values += one.values
        skipped += [f"{im} (pair {i + 1})" if len(pairs) > 1 else im for im in one.skipped]
    return PerImageBD(tuple(values), tuple(skipped))


# ---------------------------------------------------------------- the comparison
def compare(baseline: Union[Arm, PathLike], arms: Sequence[Union[Arm, PathLike]], per_image: bool = True,
            methods: str = "both", msssim: bool = True, replicate_key: str = "seed",
            one_point: bool = False, metric: str = "psnr-rgb") -> List[Row]:
    """The baseline's row, then one row per arm: BD figures against the baseline.

    Without replicates (one curve per arm) each arm is compared with the baseline's curve. With
    replicates, each replicate of an arm is paired with the baseline's replicate of the same
    key (`replicate_key`=value labels the pairs), `values` are the means over the pairs and
    `each` lists them; the baseline's row is then its seed band: every other replicate of the
    baseline against its first. An arm without replicates against a replicated baseline is
    compared with the baseline's replicates pooled into one curve. `per_image`: the per-image
    band from the curves' per_image.csv rows (pooled over the pairs). `metric`: the quality the
    BD figures are on (psnr-rgb; ms-ssim in dB)."""
    base = as_arm(baseline)
    opts = (per_image, methods, msssim, replicate_key, one_point, metric)
    return [_row(base, base, True, *opts)] + [_row(base, as_arm(a), False, *opts) for a in arms]


def pairs(base: Arm, arm: Arm, key: str = "seed", is_base: bool = False) -> List[Tuple[str, Curve, Curve]]:
    """The (label, baseline curve, arm curve) pairs a comparison of `arm` is made of: one
    replicate against the baseline's of the same value ('seed=2'), the pooled curves when either
    side has no replicates (''), and for the baseline itself (`is_base`) each other replicate
    against its first ('seed=2 vs 1': its seed band)."""
    reps = list(arm.replicates)
    if is_base:
        return [(f"{key}={v} vs {reps[0]}", arm.replicates[reps[0]], arm.replicates[v]) for v in reps[1:]]
    if reps == [None] or list(base.replicates) == [None]:
        return [("", base.curve, arm.curve)]
    return [(f"{key}={v}", base.replicates[v], arm.replicates[v]) for v in reps if v in base.replicates]


def _row(base: Arm, arm: Arm, is_base: bool, per_image: bool, methods: str, msssim: bool,
         key: str, one_point: bool, metric: str) -> Row:
    row = Row(arm.name, is_base, arm.curve)
    pairs_ = pairs(base, arm, key, is_base)
    missing = [v for v in arm.replicates if v is not None and not is_base and list(base.replicates) != [None]
               and v not in base.replicates]
    if missing:
        row.notes.append(f"no baseline run for {key}=" + ",".join(missing))
    row.pairs = len(pairs_)
    if not pairs_:
        return row
    single = len(pairs_) == 1 and not pairs_[0][0]
    per: Dict[str, List[Tuple[str, float]]] = {}
    for label, b, t in pairs_:
        p = bd_pair(b.results, t.results, methods, msssim, one_point, metric)
        row.notes += [f"{label}: {n}" for n in p.notes] if not single else p.notes
        row.error = row.error or p.error
        for k, v in p.values.items():
            per.setdefault(k, []).append((label, v))
    order = [k for k in BD_KEYS if k in per] + [k for k in per if k not in BD_KEYS]
    row.values = {k: sum(v for _, v in per[k]) / len(per[k]) for k in order}
    row.each = {k: per[k] for k in order}
    if per_image:
        row.per_image = per_image_band([(b.per_image, t.per_image) for _, b, t in pairs_], metric)
    return row


# ---------------------------------------------------------------- arms at one rate
@dataclass(frozen=True)
class Delta:
    """arm - baseline on one metric, image by image, for arms coded at the same rate (e.g. stage-2
    fine-tunes of one checkpoint, where BD figures are undefined): per image the mean over the
    replicate pairs, then `mean` ± `band` = t_{0.975,n-1} · SE over the `n` images (95%);
    `each`: (pair label, mean over the images) per pair."""

    key: str
    mean: float
    band: float
    n: int
    each: Tuple[Tuple[str, float], ...]


def _per_image(curve: Curve, key: str) -> Dict[str, float]:
    """{image: value of `key`} of a curve's per_image rows (a pooled curve: the mean per image)."""
    vals: Dict[str, List[float]] = {}
    for r in curve.per_image:
        if r.get(key) not in (None, ""):
            vals.setdefault(r["image"], []).append(float(r[key]))
    return {im: sum(v) / len(v) for im, v in vals.items()}


def deltas(baseline: Union[Arm, PathLike], arm: Union[Arm, PathLike], keys: Sequence[str] = ("psnr-rgb",),
           replicate_key: str = "seed", is_base: bool = False) -> Dict[str, Delta]:
    """{key: Delta} of `arm` against `baseline` from their per_image.csv rows, replicates paired
    as `compare` pairs them (`is_base`: the baseline's seed band, each other replicate against its
    first). Images missing on either side of a pair are left out of that pair."""
    base, test = as_arm(baseline), as_arm(arm)
    prs = pairs(base, test, replicate_key, is_base)
    if not prs:
        raise ValueError(f"deltas: {test.name} has no replicate paired with {base.name}'s "
                         f"({replicate_key} values differ, or the baseline has one replicate)")
    out = {}
    for key in keys:
        per: Dict[str, List[float]] = {}
        each = []
        for label, b, t in prs:
            bv, tv = _per_image(b, key), _per_image(t, key)
            common = [im for im in tv if im in bv]
            if not common:
                raise ValueError(f"deltas: no image with {key!r} on both sides of {test.name} {label}".rstrip())
            for im in common:
                per.setdefault(im, []).append(tv[im] - bv[im])
            each.append((label, sum(tv[im] - bv[im] for im in common) / len(common)))
        band = PerImageBD(tuple(sum(v) / len(v) for v in per.values()))  # mean ± t·SE over the images
        out[key] = Delta(key, band.mean, band.half_width, len(band.values), tuple(each))
    return out


# ---------------------------------------------------------------- tables
def fmt(key: str, v: float) -> str:
    """A BD figure as the tables print it: BD-PSNR to 3 decimals, BD-rate to 2, signed."""
    return f"{v:+.3f}" if "psnr" in key else f"{v:+.2f}"


def _range(curve: Curve, metric: str, digits: int) -> str:
    try:
        v = [x for x in get_metric(curve.results, metric).tolist() if x is not None and math.isfinite(x)]
    except KeyError:
        return ""
    return f"{min(v):.{digits}f}-{max(v):.{digits}f}" if v else ""


def _replicated(rows: Sequence[Row]) -> bool:
    """Whether any row pairs replicates (its pairs are labelled, e.g. 'seed=1')."""
    return any(lab for r in rows for each in r.each.values() for lab, _ in each)


def table(rows: Sequence[Row], per_image: bool = True,
          replicate_key: str = "seed") -> Tuple[List[str], List[List[str]]]:
    """(header, cells) of a comparison: arm, points, bpp and PSNR ranges, the BD figures (with the
    per-pair values when there are replicates), the per-image band and the notes."""
    reps = _replicated(rows)
    keys = [k for k in BD_KEYS if any(k in r.values for r in rows)]
    head = ["arm", "points", "bpp", "PSNR dB"]
    for k in keys:
        head.append(("mean " if reps else "") + BD_KEYS[k])
        if reps:
            head.append(f"{BD_KEYS[k].split(' (')[0]} by {replicate_key}")
    head += [PER_IMAGE_TITLE] * per_image + ["notes"]
    body = []
    for r in rows:
        cells = [r.name + (" (baseline)" if r.baseline else ""), str(r.curve.points),
                 _range(r.curve, "bpp", 4), _range(r.curve, "psnr-rgb", 2)]
        for k in keys:
            cells.append(fmt(k, r.values[k]) if k in r.values
                         else ("0 (baseline)" if r.baseline and not r.pairs else "-"))
            if reps:
                cells.append("; ".join(f"{lab}: {fmt(k, v)}" for lab, v in r.each.get(k, [])))
        if per_image:
            cells.append(r.per_image_text())
        cells.append(" / ".join(r.notes))
        body.append(cells)
    return head, body


def markdown(rows: Sequence[Row], per_image: bool = True, replicate_key: str = "seed") -> str:
    """The comparison as a markdown table."""
    head, body = table(rows, per_image, replicate_key)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(esc(c) for c in cells) + " |" for cells in body)])


def to_csv(rows: Sequence[Row], per_image: bool = True, replicate_key: str = "seed") -> str:
    """The comparison as CSV: one row per arm, the BD figures unrounded."""
    keys = [k for k in BD_KEYS if any(k in r.values for r in rows)]
    each = keys if _replicated(rows) else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "baseline", "points", *keys, *[f"{k}_each" for k in each],
                *(["image_bd_rate", "image_bd_rate_half_width", "images", "images_dropped"] if per_image else []),
                "notes"])
    for r in rows:
        pi = r.per_image
        w.writerow([r.name, int(r.baseline), r.curve.points,
                    *[repr(r.values[k]) if k in r.values else "" for k in keys],
                    *["; ".join(f"{lab}: {v!r}" for lab, v in r.each.get(k, [])) for k in each],
                    *([] if not per_image else ["", "", "", ""] if pi is None else
                      [repr(pi.mean) if pi.values else "", repr(pi.half_width) if len(pi.values) > 1 else "",
                       len(pi.values), " ".join(pi.skipped)]),
                    " / ".join(r.notes)])
    return buf.getvalue()


def text(rows: Sequence[Row], per_image: bool = True, replicate_key: str = "seed") -> str:
    """The comparison as aligned plain text (the terminal's default)."""
    head, body = table(rows, per_image, replicate_key)
    cols = [i for i in range(len(head)) if head[i] != "notes"]
    width = [max(len(head[i]), *(len(c[i]) for c in body)) for i in cols]
    line = lambda cells: "  ".join(cells[i].ljust(w) for i, w in zip(cols, width)).rstrip()  # noqa: E731
    dashes = [""] * len(head)
    for i, w in zip(cols, width):
        dashes[i] = "-" * w
    out = [line(head), line(dashes), *(line(c) for c in body)]
    notes = [f"  {c[0]}: {c[-1]}" for c in body if c[-1]]
    return "\n".join(out + (["notes:", *notes] if notes else []))


__all__ = ["Arm", "Curve", "Delta", "Pair", "Row", "as_arm", "bd_pair", "compare", "deltas", "fmt", "load_arm",
           "load_curve", "load_sweep", "markdown", "merge_results", "overrides_of", "pairs", "per_image_band",
           "table", "text", "to_csv"]
