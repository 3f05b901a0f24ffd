"""Bjøntegaard delta (VCEG-M33) BD-rate / BD-PSNR on CompressAI-style results files."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, List, Mapping, Tuple, Union

import bjontegaard
import numpy as np

ResultsLike = Union[str, Path, Mapping[str, Any]]
METHODS = {"cubic": "cubic", "polyfit": "cubic", "pchip": "pchip", "akima": "akima"}
MIN_POINTS = {"cubic": 4, "pchip": 2, "akima": 2}
# canonical metric key -> accepted spellings (older CompressAI files use "psnr"; newer "ms-ssim-rgb")
ALIASES = {"psnr-rgb": ("psnr-rgb", "psnr"), "ms-ssim": ("ms-ssim", "ms-ssim-rgb")}


@dataclass(frozen=True)
class BDResult:
    """BD-rate (%, negative = saving), BD-quality (metric units), overlap fraction and integration ranges."""

    bd_rate: float
    bd_psnr: float
    method: str
    overlap: float  # overlap of the quality ranges / their union (the BD-rate integration domain)
    quality_range: Tuple[float, float]
    rate_range: Tuple[float, float]
    rate_overlap: float = float("nan")  # same for the (log-)rate ranges (the BD-PSNR integration domain)


def _curve(rate, quality, label: str, min_points: int) -> Tuple[np.ndarray, np.ndarray]:
    """Validate one RD curve and return it sorted by rate."""
    r, q = np.asarray(rate, dtype=float).ravel(), np.asarray(quality, dtype=float).ravel()
    if r.size != q.size:
        raise ValueError(f"{label}: {r.size} rates but {q.size} quality values")
    if r.size < min_points:
        raise ValueError(f"{label}: {r.size} RD points, this method needs at least {min_points}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"{label}: rates/quality contain NaN or inf")
    if np.any(r <= 0):
        raise ValueError(f"{label}: rates must be > 0 (log rate)")
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    if np.any(np.diff(r) == 0):
        raise ValueError(f"{label}: duplicate rates {np.unique(r[1:][np.diff(r) == 0]).tolist()}")
    if np.any(np.diff(q) <= 0):
        raise ValueError(f"{label}: quality is not strictly increasing with rate (non-monotonic RD curve)")
    return r, q


def _overlap(a: np.ndarray, b: np.ndarray) -> Tuple[float, Tuple[float, float]]:
    """Overlap of the ranges of a and b as a fraction of their union, plus the overlap interval."""
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return (max(hi - lo, 0.0) / union if union > 0 else 0.0), (float(lo), float(hi))


def bd(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip",
       min_overlap: float = 0.5) -> BDResult:
    """BD-rate over the overlapping quality range and BD-PSNR over the overlapping log-rate range."""
    m = METHODS.get(method)
    if m is None:
        raise ValueError(f"unknown BD method {method!r}; choose one of {sorted(METHODS)}")
    ra, qa = _curve(rate_anchor, quality_anchor, "anchor", MIN_POINTS[m])
    rt, qt = _curve(rate_test, quality_test, "test", MIN_POINTS[m])
    q_ov, q_rng = _overlap(qa, qt)
    r_ov, (lr_lo, lr_hi) = _overlap(np.log10(ra), np.log10(rt))
    out = {}
    for key, ov, what, fn in (("rate", q_ov, "quality", bjontegaard.bd_rate),
                              ("psnr", r_ov, "rate", bjontegaard.bd_psnr)):
        if ov <= 0:
            warnings.warn(f"RD curves do not overlap in {what}; BD-{key} is undefined (NaN)", stacklevel=2)
            out[key] = float("nan")
            continue
        if ov < min_overlap:
            warnings.warn(f"RD curves overlap only {ov:.0%} of the union {what} range (< {min_overlap:.0%}); "
                          f"BD-{key} only describes that part of the curves", stacklevel=2)
        out[key] = float(fn(ra, qa, rt, qt, method=m, require_matching_points=False, min_overlap=0))
    rate_range = (10 ** lr_lo, 10 ** lr_hi) if r_ov > 0 else (math.nan,) * 2
    return BDResult(out["rate"], out["psnr"], m, q_ov, q_rng, rate_range, r_ov)


def bd_rate(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip") -> float:
    """BD-rate in percent (negative = test needs fewer bits at equal quality)."""
    return bd(rate_anchor, quality_anchor, rate_test, quality_test, method).bd_rate


def bd_psnr(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip") -> float:
    """BD-PSNR (average quality gain in metric units at equal rate)."""
    return bd(rate_anchor, quality_anchor, rate_test, quality_test, method).bd_psnr


def _normalize(data: Mapping[str, Any], where: str) -> dict:
    """Check the CompressAI layout and add canonical metric keys ('psnr-rgb', 'ms-ssim') for legacy spellings."""
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping):
        raise ValueError(f"{where}: expected {{'name', 'description', 'results': {{'bpp': [...], ...}}}}")
    data = dict(data)
    res = data["results"] = dict(data["results"])
    for canon, names in ALIASES.items():
        for n in names:
            if canon not in res and n in res:
                res[canon] = res[n]
    data.setdefault("name", Path(where).stem)
    return data


# the packaged CompressAI Kodak curves (codecx/data/anchors/<zoo-name>.json; codecx.metrics.anchors)
def _anchor_dir() -> Path:
    """Directory holding the packaged anchor JSON files."""
    return Path(str(files("codecx.data").joinpath("anchors")))


def list_anchors() -> List[str]:
    """Names of the packaged anchors (CompressAI zoo names, e.g. 'mbt2018-mean')."""
    d = _anchor_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def anchor_path(name: str) -> Path:
    """Path of the packaged anchor `name`; ValueError listing the available names if unknown."""
    if name not in list_anchors():
        raise ValueError(f"unknown anchor {name!r}; available: {', '.join(list_anchors()) or '(none packaged)'}")
    return _anchor_dir() / f"{name}.json"


def load_results(path_or_name: ResultsLike) -> dict:
    """Read a CompressAI-layout results JSON (path, packaged anchor name, or an already-loaded dict)."""
    if isinstance(path_or_name, Mapping):
        return _normalize(path_or_name, str(path_or_name.get("name", "<dict>")))
    p = Path(path_or_name)
    if p.is_file():
        return _normalize(json.loads(p.read_text()), str(p))
    if str(path_or_name) in list_anchors():
        return _normalize(json.loads(anchor_path(str(path_or_name)).read_text()), str(path_or_name))
    raise FileNotFoundError(f"{path_or_name!r} is neither a results file nor a packaged anchor "
                            f"(available anchors: {', '.join(list_anchors())})")


def get_metric(results: Mapping[str, Any], metric: str) -> np.ndarray:
    """Series `metric` from a loaded results dict (accepting legacy aliases); KeyError if absent."""
    res = results["results"]
    for n in ALIASES.get(metric, (metric,)):
        if n in res:
            return np.asarray(res[n], dtype=float)
    raise KeyError(f"metric {metric!r} not in {results.get('name', 'results')} (has: {sorted(res)})")


def msssim_db(x) -> np.ndarray:
    """MS-SSIM on the CompressAI dB scale, -10*log10(1 - ms_ssim)."""
    return -10 * np.log10(1 - np.asarray(x, dtype=float))


def bd_from_results(anchor: ResultsLike, test: ResultsLike, metric: str = "psnr-rgb", method: str = "pchip",
                    min_overlap: float = 0.5) -> BDResult:
    """BD metrics of `test` vs `anchor` on `metric` vs bpp; MS-SSIM is taken in dB (-10log10(1-x))."""
    a, t = load_results(anchor), load_results(test)
    qa, qt = get_metric(a, metric), get_metric(t, metric)
    if metric.startswith("ms-ssim"):
        qa, qt = msssim_db(qa), msssim_db(qt)
    return bd(get_metric(a, "bpp"), qa, get_metric(t, "bpp"), qt, method, min_overlap)


def bd_methods(anchor: ResultsLike, test: ResultsLike, metric: str = "psnr-rgb", method: str = "both",
               min_overlap: float = 0.5) -> Tuple[dict, list]:
    """({method: BDResult}, notes) for 'pchip', 'cubic' or 'both' (cubic only where both curves
    have >= 4 points); notes collect the overlap warnings and which methods were skipped."""
    a, t = load_results(anchor), load_results(test)
    n = min(len(get_metric(a, "bpp")), len(get_metric(t, "bpp")))
    methods = ["pchip", "cubic"] if method == "both" else [method]
    notes, out = [], {}
    if method == "both" and n < MIN_POINTS["cubic"]:
        methods.remove("cubic")
        notes.append(f"cubic (VCEG-M33) skipped: it needs >= {MIN_POINTS['cubic']} RD points per curve, "
                     f"the shorter curve has {n}; pchip only")
    for m in methods:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[m] = bd_from_results(a, t, metric, m, min_overlap)
        notes += [str(w.message) for w in caught if str(w.message) not in notes]
    return out, notes


# ---------------------------------------------------------------- one point against a curve
# The one-point form of Bjøntegaard's measure (VCEG-M33): the integrals of BD-rate / BD-PSNR
# shrink to the anchor curve's value at the test point's quality (or rate), on the same
# interpolation of log rate as `bd` (pchip by default). Never extrapolated: outside the
# anchor's quality (rate) range the value is NaN.

def _anchor_front(rate, quality) -> Tuple[np.ndarray, np.ndarray]:
    """The anchor's finite points, sorted by rate, on their upper envelope (each point better
    than every cheaper one), so that quality increases strictly with rate; ValueError when
    fewer than 2 remain."""
    r, q = np.asarray(rate, dtype=float).ravel(), np.asarray(quality, dtype=float).ravel()
    if r.size != q.size:
        raise ValueError(f"anchor: {r.size} rates but {q.size} quality values")
    keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[keep], q[keep]
    order = np.lexsort((-q, r))  # by rate; at equal rate the best quality first
    r, q = r[order], q[order]
    front = [i for i in range(r.size) if i == 0 or (q[i] > q[:i].max() and r[i] > r[:i].max())]
    if len(front) < 2:
        raise ValueError(f"anchor: {len(front)} usable RD point(s), a curve needs at least 2")
    return r[front], q[front]


def delta_rate_at(rate_anchor, quality_anchor, rate: float, quality: float, method: str = "pchip") -> float:
    """Rate change in % of the point (rate, quality) against the anchor's rate at that quality,
    log rate interpolated over quality as in BD-rate (Bjøntegaard, VCEG-M33); NaN when
    `quality` is outside the anchor's range or the point is not finite."""
    from bjontegaard.interpolation import interpolate

    ra, qa = _anchor_front(rate_anchor, quality_anchor)
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(quality) and qa[0] <= quality <= qa[-1]):
        return float("nan")
    log_ra = float(interpolate(qa, np.log10(ra), METHODS[method])(quality))
    return (rate / 10 ** log_ra - 1) * 100


def delta_quality_at(rate_anchor, quality_anchor, rate: float, quality: float, method: str = "pchip") -> float:
    """Quality difference of the point against the anchor's quality at the point's rate, quality
    interpolated over log rate as in BD-PSNR (Bjøntegaard, VCEG-M33); NaN outside the anchor's
    rate range."""
    from bjontegaard.interpolation import interpolate

    ra, qa = _anchor_front(rate_anchor, quality_anchor)
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(quality) and ra[0] <= rate <= ra[-1]):
        return float("nan")
    return quality - float(interpolate(np.log10(ra), qa, METHODS[method])(math.log10(rate)))


POINT_DELTAS = {  # key -> (quality metric, which delta)
    "delta_rate": ("psnr-rgb", "rate"), "delta_psnr": ("psnr-rgb", "quality"),
    "delta_rate_msssim": ("ms-ssim", "rate"), "delta_msssim_db": ("ms-ssim", "quality")}


def anchor_curve(anchor: ResultsLike, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """(bpp, quality) of an anchor on `metric` (MS-SSIM in dB) as used by `point_deltas`."""
    a = load_results(anchor)
    q = get_metric(a, metric)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = msssim_db(q) if metric.startswith("ms-ssim") else q
    return _anchor_front(get_metric(a, "bpp"), q)


def point_deltas(anchor: ResultsLike, point: Mapping[str, Any], method: str = "pchip") -> dict:
    """One RD point ({'bpp', 'psnr-rgb', 'ms-ssim'}) against an anchor curve: delta_rate (%) and
    delta_psnr (dB), delta_rate_msssim (%) and delta_msssim_db (MS-SSIM dB); NaN where the point
    lies outside the anchor's range or a metric is missing on either side."""
    out = {}
    for key, (metric, kind) in POINT_DELTAS.items():
        try:
            ra, qa = anchor_curve(anchor, metric)
        except (KeyError, ValueError):
            out[key] = float("nan")
            continue
        rate, q = float(point.get("bpp", math.nan)), point.get(metric)
        q = math.nan if q is None else float(q)
        if metric.startswith("ms-ssim"):
            q = float(msssim_db(q)) if q < 1 else math.nan
        fn = delta_rate_at if kind == "rate" else delta_quality_at
        out[key] = fn(ra, qa, rate, q, method)
    return out


# ---------------------------------------------------------------- image by image
# A paired noise band: when two codecs are evaluated on the same images, each image's own RD
# curve (one point per checkpoint / lambda) gives one BD-rate, and the spread of those over the
# images says whether the curves' difference is more than image-to-image scatter.

#: the band's confidence level: mean ± t_{(1+LEVEL)/2, n-1} · SE, for every n
LEVEL = 0.95


def t_quantile(n: int, level: float = LEVEL) -> float:
    """Student's t quantile t_{(1+level)/2, n-1} of a mean over `n` values (3.182 at n=4,
    2.069 at n=24; 1.96 as n grows): the band's half-width in standard errors."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, n - 1)) if n > 1 else float("nan")


@dataclass(frozen=True)
class PerImageBD:
    """BD-rate % of test against anchor on each image's own RD curve (VCEG-M33 per image), and
    its band: mean ± t_{0.975, n-1} · SE over the images (a 95% Student-t interval, for every n;
    with 4 images t = 3.18, not 2), naming the images it had to drop."""

    values: Tuple[float, ...]  # one per image that both curves cover with a monotonic curve
    skipped: Tuple[str, ...] = ()  # images dropped: not in both, non-monotonic, not overlapping

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def se(self) -> float:
        """Standard error of the mean over the images (NaN with fewer than 2)."""
        n = len(self.values)
        return float(np.std(self.values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def half_width(self) -> float:
        """The band's half-width, t_{0.975, n-1} · SE (NaN with fewer than 2 values)."""
        return t_quantile(len(self.values)) * self.se

    def text(self, unit: str = "images") -> str:
        """'mean ± half-width (n unit)', plus '; k dropped: names' when images were dropped;
        '-' with fewer than 2 values."""
        if len(self.values) < 2:
            return "-" + (f" ({self._dropped()})" if self.skipped else "")
        return f"{self.mean:+.2f} ± {self.half_width:.2f} ({len(self.values)} {unit}" + (
            f"; {self._dropped()})" if self.skipped else ")")

    def _dropped(self) -> str:
        return f"{len(self.skipped)} dropped: {', '.join(self.skipped)}"

    def __str__(self) -> str:
        return self.text()


def per_image_curves(rows, metric: str = "psnr-rgb") -> dict:
    """{image: results dict} from per-image rows (eval's per_image.csv as dicts): each image's RD
    curve over the rows (checkpoints) it appears in."""
    curves: dict = {}
    for r in rows:
        c = curves.setdefault(r["image"], {"results": {"bpp": [], metric: []}})["results"]
        c["bpp"].append(float(r["bpp"]))
        c[metric].append(float(r[metric]))
    return curves


def read_per_image(path: Union[str, Path]) -> list:
    """The rows of a per_image.csv (eval.py, codecx report); [] when the file does not exist."""
    import csv

    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


def bd_rate_per_image(anchor_rows, test_rows, metric: str = "psnr-rgb", method: str = "pchip") -> PerImageBD:
    """BD-rate of `test_rows` against `anchor_rows` (per-image rows of the same images at several
    lambdas) image by image: the paired spread of the BD-rate itself (Bjøntegaard VCEG-M33).
    Images without a BD-rate (on one side only, a non-monotonic curve, curves that do not
    overlap) are dropped and named in `skipped`."""
    a, t = per_image_curves(anchor_rows, metric), per_image_curves(test_rows, metric)
    values, skipped = [], []
    if not a or not t:  # nothing to pair (e.g. no per_image.csv): nothing is dropped either
        return PerImageBD((), ())
    for image in sorted(set(a) | set(t)):
        if image not in a or image not in t:  # evaluated on one side only
            skipped.append(image)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an image's short range: its value still counts
                v = bd_from_results(a[image], t[image], metric, method).bd_rate
        except ValueError:  # e.g. one image's curve not monotonic
            v = float("nan")
        if math.isfinite(v):
            values.append(v)
        else:  # NaN: the two curves of this image do not overlap
            skipped.append(image)
    return PerImageBD(tuple(values), tuple(skipped))
