"""The figures of a comparison (Agg backend), used by `codecx plot`, `codecx compare`,
`codecx report`, the sweep report and the W&B / TensorBoard summaries alike:

- `plot_rd`: PSNR / MS-SSIM against bpp; labels are only the settings that differ between the
  curves, shortened (`lpc, invert, latent_mse`); colours by setting family, markers by the
  other settings, the legend outside the axes, anchors grey dash-dotted;
- `plot_delta`: PSNR minus the baseline's at the same rate, against bpp (pchip in log rate,
  as BD-PSNR; Bjøntegaard VCEG-M33), with the baseline's seed band shaded when it has
  replicates: the figure for effects of a few tenths of a dB;
- `plot_bd_bars`: BD-rate per arm, sorted, the baseline at zero, with its per-image band
  (± t·SE, 95%), each seed pair's value and the baseline's seed band.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bdrate import ResultsLike, get_metric, load_results, msssim_db

YLABELS = {"psnr-rgb": "PSNR-RGB [dB]", "ms-ssim": "MS-SSIM [dB]  (-10 log10(1 - MS-SSIM))"}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
BASELINE_COLOUR = "black"
ANCHOR_STYLE = {"color": "0.45", "ls": "-.", "lw": 1.4}
EMPTY = {"[]", "{}", "null", "none", "None", ""}
MAX_LABEL = 48


# ---------------------------------------------------------------- labels and styles
_SPLIT = re.compile(r",(?=[^,=\[\]{}]+=)")  # commas that start a new key=value (not inside [a,b])


def parse_label(label: str) -> Optional[Dict[str, str]]:
    """{'data.invert': 'True', 'transform': 'lpc'} from a group label 'data.invert=True,transform=lpc'
    (a trailing ' (baseline)' ignored); None when it is not a list of key=value settings."""
    label = label.replace(" (baseline)", "")
    tokens = [t.strip() for t in _SPLIT.split(label) if t.strip()]
    if not tokens or any("=" not in t for t in tokens):
        return None
    return dict(t.split("=", 1) for t in tokens)


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _boolish(values: Iterable[Optional[str]]) -> bool:
    """A setting that is on or off across the labels: true/false, 1/0, or absent."""
    return all(v is None or str(v).lower() in ("true", "false", "1", "0", "1.0", "0.0") for v in values)


def _on(v: Optional[str]) -> bool:
    return v is not None and str(v).lower() in ("true", "1", "1.0")


def _token(key: str, value: Optional[str], values: Sequence[Optional[str]]) -> str:
    """How one differing setting reads in a short label: 'invert' (on/off), 'no transform' (empty),
    'alpha=0.1' (a number), else the value ('lpc'); '' when off or absent."""
    last = key.split(".")[-1]
    if _boolish(values):
        return last if _on(value) else ""
    if value is None:
        return ""
    if value in EMPTY:
        return f"no {last}"
    if _number(value):
        return f"{last}={value}"
    return value


def family_key(parsed: Sequence[Dict[str, str]], keys: Sequence[str]) -> Optional[str]:
    """The setting that colours the curves: of the differing `keys`, the one with the most
    distinct values that is not a plain on/off switch (a top-level group first on ties)."""
    cands = [k for k in keys if not _boolish([p.get(k) for p in parsed])]
    if not cands:
        return keys[0] if keys else None
    return max(cands, key=lambda k: (len({p.get(k) for p in parsed}), "." not in k, -keys.index(k)))


class Styles:
    """Short labels, colours and markers of a set of curve names: the settings that differ
    between them (`parse_label`), the family setting first and giving the colour, the other
    settings the marker. Names that are not key=value lists keep their text, one colour each.
    `baseline`: that name is drawn black. `drop`: settings never shown (e.g. the replicate key)."""

    def __init__(self, names: Sequence[str], baseline: Optional[str] = None, drop: Sequence[str] = ()):
        self.names = list(dict.fromkeys(names))
        parsed = [parse_label(n) for n in self.names]
        self.baseline = baseline
        self.label: Dict[str, str] = {}
        self.colour: Dict[str, str] = {}
        self.marker: Dict[str, str] = {}
        self.family: Dict[str, str] = {}
        if len(self.names) < 2 or any(p is None for p in parsed):
            for i, n in enumerate(self.names):
                self.label[n] = _clip(n.replace(" (baseline)", ""))
                self.colour[n] = COLOURS[i % len(COLOURS)]
                self.marker[n] = MARKERS[(i // len(COLOURS)) % len(MARKERS)]
                self.family[n] = n
        else:
            parsed = [{k: v for k, v in p.items() if k not in drop} for p in parsed]
            keys = list(dict.fromkeys(k for p in parsed for k in p))
            differing = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
            fam = family_key(parsed, differing)
            order = ([fam] if fam else []) + [k for k in differing if k != fam]
            values = {k: [p.get(k) for p in parsed] for k in differing}
            fams: List[str] = []
            rests: List[str] = []
            for n, p in zip(self.names, parsed):
                toks = [_token(k, p.get(k), values[k]) for k in order]
                f, rest = (toks[0], toks[1:]) if fam else ("", toks)
                label = ", ".join(t for t in [f, *rest] if t) or "default"
                self.label[n] = _clip(label)
                self.family[n] = f
                fams.append(f) if f not in fams else None
                key = ", ".join(t for t in rest if t)
                rests.append(key) if key not in rests else None
                self.marker[n] = MARKERS[rests.index(key) % len(MARKERS)]
            if len(set(self.label.values())) < len(self.label):  # shortening merged two: key=value
                for n, p in zip(self.names, parsed):
                    self.label[n] = _clip(", ".join(f"{k}={p[k]}" for k in order if k in p) or "default")
            coloured = [f for f in fams if f not in ("", "default") and not f.startswith("no ")]
            for n in self.names:
                f = self.family[n]
                self.colour[n] = COLOURS[coloured.index(f) % len(COLOURS)] if f in coloured else "0.3"
        if baseline in self.colour:
            self.colour[baseline] = BASELINE_COLOUR

    def order(self, names: Iterable[str]) -> List[str]:
        """`names` in reading order: the baseline, then by family, then by the other settings."""
        fams = list(dict.fromkeys(self.family[n] for n in self.names))
        marks = list(dict.fromkeys(self.marker[n] for n in self.names))
        return sorted(names, key=lambda n: (n != self.baseline, fams.index(self.family[n]),
                                            marks.index(self.marker[n]), self.label[n]))

    def kw(self, name: str) -> Dict[str, Any]:
        """matplotlib keywords of a curve: colour, marker, label."""
        return {"color": self.colour[name], "marker": self.marker[name], "label": self.label[name]}


def _clip(s: str, n: int = MAX_LABEL) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def short_labels(names: Sequence[str], drop: Sequence[str] = ()) -> List[str]:
    """The legend labels of `names`: only the settings that differ between them, shortened."""
    st = Styles(names, drop=drop)
    return [st.label[n] for n in names]


def _xlabel(loaded: Sequence[dict]) -> str:
    """x-axis label: 'bpp (real bitstream)' unless the files declare another 'bpp_label' / 'bpp_source'."""
    labels = []
    for d in loaded:
        lab = d.get("bpp_label") or f"bpp ({d.get('bpp_source', 'real bitstream')})"
        if lab not in labels:
            labels.append(lab)
    return " / ".join(labels) or "bpp (real bitstream)"


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_path: Union[str, Path]) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.15)
    return out


def _legend(fig: Figure, handles, labels, n: int, title: Optional[str] = None) -> None:
    """One legend for the figure, right of the axes, in as many columns as it needs."""
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
                   ncol=1 if n <= 24 else 2, frameon=False, title=title, title_fontsize=8)


def _split_replicate(name: str, key: Optional[str]) -> Tuple[str, Optional[str]]:
    """('group', '2') from 'group,seed=2' when `key` is 'seed'."""
    if key:
        m = re.search(rf"(?:^|,){re.escape(key)}=([^,]*)$", name)
        if m:
            return name[: m.start()], m.group(1)
    return name, None


# ---------------------------------------------------------------- RD curves
def plot_rd(results_list: Iterable[ResultsLike], out_path: Union[str, Path], anchors: Iterable[ResultsLike] = (),
            metrics: Sequence[str] = ("psnr-rgb", "ms-ssim"), title: str = "",
            baseline: Optional[str] = None, replicate_key: Optional[str] = None) -> Path:
    """One panel per metric against bpp, a PNG at `out_path`. Curves are labelled by the
    settings that differ between their names (`Styles`), coloured by family, the `baseline`
    black; with `replicate_key` ('seed') the curves 'G,seed=V' of one group share its style,
    the first replicate solid, the others dotted. Anchors: grey, dash-dotted."""
    runs = [load_results(r) for r in results_list]
    refs = [load_results(a) for a in anchors]
    if not runs and not refs:
        raise ValueError("nothing to plot: results_list and anchors are both empty")
    split = [_split_replicate(str(d.get("name", f"run{i}")), replicate_key) for i, d in enumerate(runs)]
    groups = list(dict.fromkeys(g for g, _ in split))
    st = Styles(groups, baseline=baseline)
    first = {}
    for g, v in split:
        first.setdefault(g, v)
    fig = _new_figure(5.2 * len(metrics), 4.3)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    handles: Dict[str, Any] = {}
    for ax, metric in zip(axes, metrics):
        for d, (g, v) in zip(runs, split):
            xy = _xy(d, metric)
            if xy is None:
                continue
            solid = v == first[g]
            kw = st.kw(g)
            line, = ax.plot(*xy, ls="-" if solid else ":", ms=4 if solid else 3.5, lw=2.2 if g == baseline else 1.3,
                            mfc=kw["color"] if solid else "none", color=kw["color"], marker=kw["marker"],
                            zorder=3 if g == baseline else 2)
            handles.setdefault(kw["label"] + (" (baseline)" if g == baseline else ""), line)
        for d in refs:
            xy = _xy(d, metric)
            if xy is not None:
                line, = ax.plot(*xy, **ANCHOR_STYLE, zorder=1)
                handles.setdefault(f"{d.get('name', 'anchor')} (anchor)", line)
        ax.set_xlabel(_xlabel(runs + refs))
        ax.set_ylabel(YLABELS.get(metric, metric))
        ax.grid(True, alpha=0.3)
    reps = len({v for _, v in split if v is not None}) > 1
    rank = {st.label[g] + (" (baseline)" if g == baseline else ""): i for i, g in enumerate(st.order(groups))}
    handles = dict(sorted(handles.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    _legend(fig, list(handles.values()), list(handles), len(handles),
            title=f"dotted, hollow: other {replicate_key} values" if reps else None)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def _xy(d: dict, metric: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(bpp, metric) of a loaded curve sorted by bpp (MS-SSIM in dB); None, with a warning, when
    the curve lacks the metric."""
    try:
        x, y = get_metric(d, "bpp"), get_metric(d, metric)
    except KeyError as e:
        warnings.warn(f"skipping {d.get('name')!r} on {metric!r}: {e}", stacklevel=3)
        return None
    if len(x) != len(y):
        warnings.warn(f"skipping {d.get('name')!r} on {metric!r}: {len(x)} bpp vs {len(y)} values", stacklevel=3)
        return None
    if metric.startswith("ms-ssim"):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = msssim_db(y)
    order = x.argsort()
    return x[order], y[order]


# ---------------------------------------------------------------- ΔPSNR against the baseline
def _front(d: dict, metric: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """log10 bpp and quality of a curve's upper envelope (quality increasing with rate)."""
    from .bdrate import _anchor_front

    xy = _xy(d, metric)
    if xy is None:
        return None
    try:
        r, q = _anchor_front(*xy)
    except ValueError:
        return None
    return np.log10(r), q


def quality_at(d: dict, bpp: np.ndarray, metric: str = "psnr-rgb") -> np.ndarray:
    """A curve's quality at `bpp`, pchip over log rate on its upper envelope (as BD-PSNR;
    Bjøntegaard VCEG-M33); NaN outside its rate range (never extrapolated)."""
    from bjontegaard.interpolation import interpolate

    f = _front(d, metric)
    out = np.full(np.shape(bpp), np.nan)
    if f is None:
        return out
    lr, q = f
    x = np.log10(np.asarray(bpp, dtype=float))
    inside = (x >= lr[0]) & (x <= lr[-1])
    if inside.any():
        out[inside] = np.asarray(interpolate(lr, q, "pchip")(x[inside]), dtype=float)
    return out


def _grid(curves: Sequence[dict], n: int = 60) -> np.ndarray:
    """`n` rates, log-spaced, over the rate range every curve covers (empty when they do not overlap)."""
    lo, hi = -math.inf, math.inf
    for d in curves:
        b = get_metric(d, "bpp")
        b = b[np.isfinite(b) & (b > 0)]
        if b.size < 2:
            return np.array([])
        lo, hi = max(lo, float(b.min())), min(hi, float(b.max()))
    return np.geomspace(lo, hi, n) if lo < hi else np.array([])


def delta_curve(pairs: Sequence[Tuple[dict, dict]], metric: str = "psnr-rgb") -> Tuple[np.ndarray, np.ndarray]:
    """(bpp, mean over the (baseline, test) pairs of test minus baseline quality at that rate),
    on the rates every curve covers."""
    grid = _grid([c for p in pairs for c in p])
    if grid.size == 0:
        return grid, grid
    d = np.mean([quality_at(t, grid, metric) - quality_at(b, grid, metric) for b, t in pairs], axis=0)
    return grid, d


def seed_band(replicates: Sequence[dict], metric: str = "psnr-rgb") -> Tuple[np.ndarray, np.ndarray]:
    """(bpp, half-width) of the baseline's seed band: at each rate the largest |quality of a
    replicate minus the first's|; empty with fewer than 2 replicates."""
    if len(replicates) < 2:
        return np.array([]), np.array([])
    grid = _grid(replicates)
    if grid.size == 0:
        return grid, grid
    q0 = quality_at(replicates[0], grid, metric)
    h = np.max([np.abs(quality_at(r, grid, metric) - q0) for r in replicates[1:]], axis=0)
    return grid, h


def plot_delta(baseline: Any, arms: Sequence[Any], out_path: Union[str, Path], metric: str = "psnr-rgb",
               title: str = "", overlay_max: int = 6) -> Path:
    """Quality minus the baseline's at the same rate against bpp, one line per arm (the mean
    over its replicate pairs; markers at its own RD points), zero = the baseline, grey: the
    baseline's seed band (`seed_band`) when it has replicates. `baseline` / `arms`:
    codecx.compare.Arm. Up to `overlay_max` arms share one panel; more get one panel each
    (the others faint behind it)."""
    from codecx.compare import pairs as arm_pairs

    names = [baseline.name, *(a.name for a in arms)]
    st = Styles(names, baseline=baseline.name)
    rank = {n: i for i, n in enumerate(st.order(names))}
    arms = sorted(arms, key=lambda a: rank[a.name])
    lines = []
    for a in arms:
        prs = [(b.results, t.results) for _, b, t in arm_pairs(baseline, a)]
        x, d = delta_curve(prs, metric) if prs else (np.array([]), np.array([]))
        pts = []
        for b, t in prs:  # each RD point of the arm against the baseline's curve
            xy = _xy(t, metric)
            if xy is not None:
                pts.append((xy[0], xy[1] - quality_at(b, xy[0], metric)))
        lines.append((a.name, x, d, pts))
    bx, bh = seed_band(list(c.results for c in baseline.replicates.values()), metric)
    unit = "dB" if metric in ("psnr-rgb", "ms-ssim") else ""
    what = "PSNR" if metric == "psnr-rgb" else metric
    ylabel = f"Δ {what} vs {_clip(st.label[baseline.name], 28)} [{unit}]".replace(" []", "")
    if len(arms) <= overlay_max:
        fig = _new_figure(6.4, 4.3)
        ax = fig.subplots()
        panels = [(ax, None)]
    else:
        ncol = 5
        nrow = math.ceil(len(arms) / ncol)
        fig = _new_figure(2.7 * ncol, 2.2 * nrow + 0.6)
        axs = fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False).ravel()
        for ax in axs[len(arms):]:
            ax.set_visible(False)
        panels = list(zip(axs, [a.name for a in arms]))
    handles: Dict[str, Any] = {}
    for ax, only in panels:
        if bx.size:
            h = ax.fill_between(bx, -bh, bh, color="0.85", lw=0, zorder=0)
            handles.setdefault(f"baseline seed band (±max |Δ| of {len(baseline.replicates)} {_key(baseline)})", h)
        h = ax.axhline(0, color=BASELINE_COLOUR, lw=1.2, zorder=1)
        handles.setdefault(f"{st.label[baseline.name]} (baseline)", h)
        for name, x, d, pts in lines:
            kw = st.kw(name)
            if only is not None and name != only:
                if x.size:
                    ax.plot(x, d, color="0.75", lw=0.6, zorder=1)
                continue
            if x.size:
                line, = ax.plot(x, d, color=kw["color"], lw=1.6, zorder=3)
                handles.setdefault(kw["label"], line)
            for px, py in pts:
                ax.plot(px, py, ls="none", marker=kw["marker"], color=kw["color"], ms=4, zorder=4)
        ax.grid(True, alpha=0.3)
        if only is not None:
            ax.set_title(st.label[only], fontsize=8)
    if len(panels) == 1:
        panels[0][0].set_xlabel(_xlabel([baseline.curve.results]))
        panels[0][0].set_ylabel(ylabel)
        _legend(fig, list(handles.values()), list(handles), len(handles))
    else:
        fig.supxlabel(_xlabel([baseline.curve.results]), fontsize=9)
        fig.supylabel(ylabel, fontsize=9)
        band = [k for k in handles if k.startswith("baseline seed band")]
        if band:
            fig.legend([handles[band[0]]], band, loc="lower right", fontsize=8, frameon=False)
    fig.suptitle(title or f"{ylabel.split(' [')[0]} (baseline) at equal rate (pchip in log bpp)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def _key(arm: Any) -> str:
    return "replicates" if len(arm.replicates) < 2 else "seeds"


# ---------------------------------------------------------------- BD-rate bars
def plot_bd_bars(rows: Sequence[Any], out_path: Union[str, Path], title: str = "") -> Path:
    """BD-rate % (pchip, PSNR; and MS-SSIM when the rows have it) per arm as horizontal bars,
    sorted, the baseline at zero: black whiskers = the per-image band (± t·SE, 95%), dots = each
    replicate pair's value, grey = the baseline's seed band (the largest |BD-rate| of its other
    replicates against the first). `rows`: codecx.compare.Row, the baseline's first."""
    base = rows[0]
    st = Styles([r.name for r in rows], baseline=base.name)
    order = sorted(rows, key=lambda r: (0.0 if r.baseline else (r.bd_rate if r.bd_rate == r.bd_rate else math.inf)))
    keys = [("bd_rate_pchip", "BD-rate % (PSNR, pchip)")]
    if any("bd_rate_msssim" in r.values for r in rows[1:]):
        keys.append(("bd_rate_msssim", "BD-rate % (MS-SSIM, pchip)"))
    n = len(order)
    fig = _new_figure(4.6 * len(keys) + 2.6, 0.34 * n + 1.4)
    axs = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    y = np.arange(n)[::-1]
    for ax, (key, xlabel) in zip(axs, keys):
        band = [abs(v) for _, v in base.each.get(key, []) if v == v]
        if band:
            ax.axvspan(-max(band), max(band), color="0.87", lw=0, zorder=0)
            xlabel += f"\ngrey: the baseline's seed band ±{max(band):.2f}"
        ax.axvline(0, color=BASELINE_COLOUR, lw=1.0, zorder=1)
        for yi, r in zip(y, order):
            v = 0.0 if r.baseline else r.values.get(key, math.nan)
            kw = st.kw(r.name)
            if v != v:
                ax.text(0, yi, " undefined", va="center", fontsize=7, color="0.4")
                continue
            ax.barh(yi, v, color=kw["color"], alpha=0.85, height=0.62, zorder=2)
            pi = r.per_image if key == "bd_rate_pchip" else None
            if pi is not None and len(pi.values) > 1 and not r.baseline:  # around its own mean
                ax.errorbar(pi.mean, yi, xerr=pi.half_width, fmt="D", ms=3, color="black", elinewidth=1,
                            capsize=2.5, zorder=4)
            each = [x for _, x in r.each.get(key, [])] if not r.baseline else []
            if len(each) > 1:
                ax.plot(each, [yi] * len(each), "o", ms=3.5, mfc="white", mec="black", mew=0.8, zorder=5)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    axs[0].set_yticks(y)
    axs[0].set_yticklabels([st.label[r.name] + ("  (baseline)" if r.baseline else
                                                 f"  {r.bd_rate:+.2f}" if r.bd_rate == r.bd_rate else "  n/a")
                            for r in order], fontsize=8)
    for t, r in zip(axs[0].get_yticklabels(), order):
        t.set_color(st.colour[r.name] if not r.baseline else BASELINE_COLOUR)
        if r.baseline:
            t.set_fontweight("bold")
    notes = ["bars and numbers: BD-rate of the curves"]
    if any(r.per_image is not None and len(r.per_image.values) > 1 for r in rows[1:]):
        notes.append("◆ with whiskers: the per-image BD-rates' mean ± t·SE (95%)")
    if any(len(r.each.get("bd_rate_pchip", [])) > 1 for r in rows[1:]):
        notes.append("○: each seed pair")
    fig.text(0.01, 0.005, "; ".join(notes), fontsize=7, color="0.3")
    fig.suptitle(title or "BD-rate against the baseline (negative: fewer bits at equal quality)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_comparison(rows: Sequence[Any], baseline: Any, arms: Sequence[Any], out_dir: Union[str, Path],
                    title: str = "", anchors: Iterable[ResultsLike] = (),
                    metrics: Sequence[str] = ("psnr-rgb", "ms-ssim")) -> Dict[str, Path]:
    """The three figures of a comparison in `out_dir`: rd.png, delta_psnr.png, bd_rate.png
    (codecx.compare rows / arms; `codecx compare --figures`, `codecx report`)."""
    out = Path(out_dir)
    curves = []
    for a in [baseline, *arms]:
        for v, c in a.replicates.items():
            curves.append(dict(c.results, name=a.name if v is None else f"{a.name},seed={v}"))
    have = [m for m in metrics if any(_has(c, m) for c in curves)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipping .* on 'ms-ssim'")
        paths = {"rd": plot_rd(curves, out / "rd.png", anchors=anchors, metrics=have or metrics[:1],
                               title=title, baseline=baseline.name, replicate_key="seed")}
    paths["delta"] = plot_delta(baseline, arms, out / "delta_psnr.png",
                                title=f"{title} — PSNR minus the baseline's at equal rate" if title else "")
    paths["bars"] = plot_bd_bars(rows, out / "bd_rate.png",
                                 title=f"{title} — BD-rate against the baseline" if title else "")
    return paths


def _has(d: dict, metric: str) -> bool:
    try:
        v = get_metric(d, metric)
    except KeyError:
        return False
    return bool(np.isfinite(np.asarray([np.nan if x is None else x for x in v.tolist()], dtype=float)).any())
