"""The reconstruction-error decomposition MSE_t / MSE_a / MSE_q (Rethinking Latent Variable, WACV 2026,
supplement eq. 11)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor

from codecx.metrics.rd import to_uint8

#: per-image columns, in CSV order: the three errors (8-bit levels squared) and two ratios
DECOMPOSE_KEYS = ("mse_t", "mse_a", "mse_q", "mse_a_ratio", "mse_q_ratio")


@torch.no_grad()
def unquantized_reconstruction(codec, x: Tensor) -> Tensor:
    """X_uq = g_s(y), y = g_a(x) without quantization, for one image (1,3,H,W): the codec's walk
    through the `Identity` channel (the decoder's trained latent transforms included, no
    refiners), clamped to [0, 1] and cropped like the decoded image."""
    from codecx.quantizers.channels import Identity

    return codec.walk(Identity(codec.quantizer), x).x_hat.clamp(0, 1)


def _mse(a: Tensor, b: Tensor) -> float:
    return torch.mean((to_uint8(a) - to_uint8(b)) ** 2).item()


@torch.no_grad()
def decompose(codec, x: Tensor, x_hat: Tensor) -> Dict[str, float]:
    """Per image: `mse_t` = MSE(X, X_q) with X_q the decoded image `x_hat`, `mse_a` = MSE(X, X_uq),
    `mse_q` = MSE(X_uq, X_q) (Rethinking Latent Variable, WACV 2026, eq. 11), all on 8-bit rounded images (the
    MSE of the eval PSNR: psnr = 10 log10(255^2 / mse_t)), and the ratios `mse_a / mse_t`, `mse_q / mse_t`
    (Rethinking Latent Variable, WACV 2026, Fig. 9; nan when mse_t = 0). `codec` in eval mode."""
    x_uq = unquantized_reconstruction(codec, x)
    mse_t, mse_a, mse_q = _mse(x, x_hat), _mse(x, x_uq), _mse(x_uq, x_hat)
    ratio = (lambda v: v / mse_t) if mse_t > 0 else (lambda v: float("nan"))  # noqa: E731
    return {"mse_t": mse_t, "mse_a": mse_a, "mse_q": mse_q,
            "mse_a_ratio": ratio(mse_a), "mse_q_ratio": ratio(mse_q)}


def _has(curve, key: str) -> bool:
    vals = curve["results"].get(key)
    return bool(vals) and any(v is not None for v in vals)


def plot_decomposition(curves, path) -> Optional[Path]:
    """MSE_q / MSE_t and MSE_a / MSE_t against bpp, one panel each, the curves labelled, coloured
    and marked as in rd.png (codecx.metrics.rdplot.Styles; CompressAI-layout results dicts;
    Rethinking Latent Variable (WACV 2026), Fig. 9); None when no curve has them."""
    from codecx.metrics.rdplot import Styles, _legend, _new_figure, _save

    curves = [c for c in curves if _has(c, "mse_q_ratio")]
    if not curves:
        return None
    st = Styles([c["name"] for c in curves], baseline=curves[0]["name"] if len(curves) > 1 else None)
    fig = _new_figure(9.6, 4.2)
    axes = fig.subplots(1, 2, sharex=True)
    handles = {}
    for name in st.order([c["name"] for c in curves]):
        r = next(c for c in curves if c["name"] == name)["results"]
        pts = sorted((b, a, q) for b, a, q in zip(r["bpp"], r["mse_a_ratio"], r["mse_q_ratio"])
                     if a is not None and q is not None)
        kw = st.kw(name)
        for ax, i in zip(axes, (2, 1)):
            line, = ax.plot([p[0] for p in pts], [p[i] for p in pts], "-", ms=4, lw=1.3, color=kw["color"],
                            marker=kw["marker"])
        handles.setdefault(kw["label"] + (" (baseline)" if name == st.baseline else ""), line)
    for ax, what in zip(axes, ("MSE_q / MSE_t (quantization)", "MSE_a / MSE_t (architecture)")):
        ax.set_xlabel("bpp (real bitstream)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    _legend(fig, list(handles.values()), list(handles), len(handles))
    fig.suptitle("Reconstruction error: quantization (q) and architecture (a)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def decomposition_section(curves, png) -> str:
    """A report.md section: the figure and each point's bpp, MSE_t, MSE_a, MSE_q and ratios
    (empty when no curve was evaluated with metrics.decompose)."""
    curves = [c for c in curves if _has(c, "mse_t")]
    if not curves:
        return ""
    plot = plot_decomposition(curves, png)
    lines = ["", "## Reconstruction-error decomposition", "",
             "MSE_t = MSE(X, X_q), MSE_a = MSE(X, g_s(y)) (no quantization), MSE_q = MSE(g_s(y), X_q) "
             "(Rethinking Latent Variable, WACV 2026, eq. 11), on 8-bit images, means over the images.", ""]
    if plot is not None:
        lines += [f"![decomposition]({plot.name})", ""]
    lines += ["| group | bpp | MSE_t | MSE_a | MSE_q | MSE_a/MSE_t | MSE_q/MSE_t |",
              "|---|---|---|---|---|---|---|"]
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    for c in curves:
        r = c["results"]
        for i in range(len(r["bpp"])):
            get = lambda k: (r.get(k) or [None] * len(r["bpp"]))[i]  # noqa: E731
            lines.append(f"| {c['name']} | {fmt(get('bpp'), 4)} | {fmt(get('mse_t'), 2)} | "
                         f"{fmt(get('mse_a'), 2)} | {fmt(get('mse_q'), 2)} | "
                         f"{fmt(get('mse_a_ratio'), 3)} | {fmt(get('mse_q_ratio'), 3)} |")
    return "\n".join(lines) + "\n"
