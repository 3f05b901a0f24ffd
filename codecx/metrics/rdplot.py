"""Rate-distortion plots (PSNR / MS-SSIM vs bpp) of CompressAI-layout results, Agg backend."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bdrate import ResultsLike, get_metric, load_results, msssim_db

YLABELS = {"psnr-rgb": "PSNR-RGB [dB]", "ms-ssim": "MS-SSIM [dB]  (-10 log10(1 - MS-SSIM))"}


def _xlabel(loaded: Sequence[dict]) -> str:
    """x-axis label: 'bpp (real bitstream)' unless the files declare another 'bpp_label' / 'bpp_source'."""
    labels = []
    for d in loaded:
        lab = d.get("bpp_label") or f"bpp ({d.get('bpp_source', 'real bitstream')})"
        if lab not in labels:
            labels.append(lab)
    return " / ".join(labels) or "bpp (real bitstream)"


def plot_rd(results_list: Iterable[ResultsLike], out_path: Union[str, Path], anchors: Iterable[ResultsLike] = (),
            metrics: Sequence[str] = ("psnr-rgb", "ms-ssim"), title: str = "") -> Path:
    """Plot one subplot per metric vs bpp (solid: results, dashed: anchors) and save a PNG to `out_path`."""
    runs = [(load_results(r), "-o") for r in results_list] + [(load_results(a), "--") for a in anchors]
    if not runs:
        raise ValueError("nothing to plot: results_list and anchors are both empty")
    fig = Figure(figsize=(6 * len(metrics), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for i, (d, style) in enumerate(runs):
            try:
                x, y = get_metric(d, "bpp"), get_metric(d, metric)
            except KeyError as e:
                warnings.warn(f"skipping {d.get('name')!r} on {metric!r}: {e}", stacklevel=2)
                continue
            if len(x) != len(y):
                warnings.warn(f"skipping {d.get('name')!r} on {metric!r}: {len(x)} bpp vs {len(y)} values", stacklevel=2)
                continue
            y = msssim_db(y) if metric.startswith("ms-ssim") else y
            order = x.argsort()
            ax.plot(x[order], y[order], style, ms=3, lw=1.2 if style == "--" else 1.6,
                    label=d.get("name", f"run{i}") + (" (anchor)" if style == "--" else ""))
        ax.set_xlabel(_xlabel([d for d, _ in runs]))
        ax.set_ylabel(YLABELS.get(metric, metric))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
