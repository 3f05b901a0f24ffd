"""Computational complexity of a backbone's transforms in KMACs per pixel, the axis of Yang &
Mandt, "Computationally-efficient neural image compression with shallow decoders" (ICCV 2023).

Counted with `torch.utils.flop_counter.FlopCounterMode` on one forward pass of every stage
(MACs = FLOPs / 2; convolutions, transposed convolutions and matrix products; GDN's 1x1
convolution included; element-wise ops, entropy models and the entropy coder not counted),
divided by the pixels of the (padded) input image. Context models: the masked convolution is
counted at full kernel size (as the parallel training-mode pass runs it) plus the entropy
parameter network, once per latent position.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["STAGES", "kmacs_per_pixel", "parameter_counts", "build_model", "complexity_table",
           "results_columns", "matched_rate_points", "plot_rdc", "COUNTER"]

#: stages in pipeline order; "decoder" = h_s + context + g_s (what the receiver runs)
STAGES = ("g_a", "h_a", "h_s", "context", "g_s")
COUNTER = "torch.utils.flop_counter.FlopCounterMode, MACs = FLOPs / 2, per pixel of the padded input"


def _macs(fn, *args) -> Tuple[Any, float]:
    with FlopCounterMode(display=False) as fc:
        out = fn(*args)
    return out, fc.get_total_flops() / 2


@torch.no_grad()
def kmacs_per_pixel(backbone: nn.Module, height: int = 256, width: int = 256) -> Dict[str, float]:
    """KMACs per pixel of g_a, h_a, h_s, context (0 without one), g_s, plus "decoder"
    (h_s + context + g_s) and "encoder" (g_a + h_a + h_s + context), on a (1, 3, H, W) input
    padded to the backbone's stride."""
    bb = backbone
    stride = int(getattr(bb, "stride", 64))
    H, W = math.ceil(height / stride) * stride, math.ceil(width / stride) * stride
    if H <= 0 or W <= 0:
        raise ValueError(f"complexity input {height}x{width}: need a positive size")
    p = next(bb.parameters())
    x = torch.zeros(1, 3, H, W, dtype=p.dtype, device=p.device)
    was_training = bb.training
    bb.eval()
    try:
        macs = dict.fromkeys(STAGES, 0.0)
        y, macs["g_a"] = _macs(bb.g_a, x)
        hyper = None
        if bb.has_side:
            z, macs["h_a"] = _macs(bb.h_a, bb.h_a_input(y))
            hyper, macs["h_s"] = _macs(bb.h_s, z)
        if getattr(bb, "autoregressive", False):
            ctx, m_ctx = _macs(bb.context, y)
            _, m_par = _macs(lambda: bb.params(hyper, like=y, ctx=ctx))
            macs["context"] = m_ctx + m_par
        _, macs["g_s"] = _macs(bb.g_s, y)
    finally:
        bb.train(was_training)
    out = {k: v / (H * W) / 1e3 for k, v in macs.items()}
    out["decoder"] = out["h_s"] + out["context"] + out["g_s"]
    out["encoder"] = out["g_a"] + out["h_a"] + out["h_s"] + out["context"]
    return out


def parameter_counts(backbone: nn.Module) -> Dict[str, int]:
    """Parameters of each stage (context: the masked convolution and entropy parameters)."""
    names = {"g_a": ["g_a"], "h_a": ["h_a"], "h_s": ["h_s"],
             "context": ["context_prediction", "entropy_parameters"], "g_s": ["g_s"]}
    out = {}
    for stage, mods in names.items():
        out[stage] = sum(p.numel() for m in mods if isinstance(getattr(backbone, m, None), nn.Module)
                         for p in getattr(backbone, m).parameters())
    return out


def build_model(name: str, **overrides: Any) -> nn.Module:
    """The architecture of backbone `model=NAME` (the registry's codecx/conf/model/NAME.yaml) with
    `overrides` (N, M, ...), no weights."""
    from codecx.models.build import build_backbone

    return build_backbone(name, **overrides)


def complexity_table(name: str, backbone: nn.Module, height: int, width: int) -> str:
    """Plain-text table: KMACs/px and parameters per stage."""
    k = kmacs_per_pixel(backbone, height, width)
    n = parameter_counts(backbone)
    lines = [f"{name}: KMACs per pixel ({COUNTER}; {height}x{width} input)",
             f"{'stage':<10}{'KMACs/px':>12}{'parameters':>14}"]
    for s in STAGES:
        lines.append(f"{s:<10}{k[s]:>12.2f}{n[s]:>14,}")
    lines.append(f"{'decoder':<10}{k['decoder']:>12.2f}{n['h_s'] + n['context'] + n['g_s']:>14,}"
                 "   (h_s + context + g_s)")
    lines.append(f"{'encoder':<10}{k['encoder']:>12.2f}{'':>14}   (g_a + h_a + h_s + context)")
    return "\n".join(lines)


def results_columns(backbone: nn.Module, height: int = 256, width: int = 256) -> Dict[str, float]:
    """`kmacs_<stage>` values of one RD point (results.json keeps them per point)."""
    return {f"kmacs_{k}": v for k, v in kmacs_per_pixel(backbone, height, width).items()}


# ---------------------------------------------------------------- rate-distortion-complexity
def matched_rate_points(curves: Sequence[Mapping[str, Any]], metric: str = "psnr-rgb",
                        bpp: Optional[float] = None) -> Tuple[Optional[float], List[Dict[str, Any]]]:
    """(target bpp, [{name, kmacs, metric}]) : each curve's `metric` interpolated (linear in
    log bpp) at one common rate, against its decoder KMACs/px (`results["kmacs_decoder"]`).

    The default rate is the geometric middle of the bpp range all curves cover; None (and no
    points) when they share no range or no curve has complexity figures."""
    usable = [c for c in curves if c["results"].get("kmacs_decoder") and c["results"].get("bpp")
              and c["results"].get(metric)]
    if not usable:
        return None, []
    if bpp is None:
        lo = max(min(c["results"]["bpp"]) for c in usable)
        hi = min(max(c["results"]["bpp"]) for c in usable)
        if lo > hi:
            return None, []
        bpp = math.sqrt(lo * hi) if lo > 0 else (lo + hi) / 2
    out = []
    for c in usable:
        r = c["results"]
        pts = sorted((b, q) for b, q in zip(r["bpp"], r[metric]) if b is not None and q is not None and b > 0)
        value = _interp_log(pts, bpp)
        if value is None:
            continue
        kmacs = [v for v in r["kmacs_decoder"] if v is not None]
        out.append({"name": c.get("name", "?"), "kmacs": sum(kmacs) / len(kmacs), metric: value})
    return bpp, out


def _interp_log(pts: Sequence[Tuple[float, float]], bpp: float) -> Optional[float]:
    if not pts or not pts[0][0] <= bpp <= pts[-1][0]:
        return None
    if len(pts) == 1:
        return pts[0][1]
    for (b0, q0), (b1, q1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            if b1 == b0:
                return q0
            t = (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return q0 + t * (q1 - q0)
    return None


def plot_rdc(curves: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "psnr-rgb",
             title: str = "") -> Optional[Path]:
    """Rate-distortion-complexity plot: `metric` at a matched rate against decoder KMACs/px
    (log x), one marker per curve; None (nothing written) without complexity figures."""
    bpp, pts = matched_rate_points(curves, metric)
    if not pts:
        return None
    from .rdplot import Styles, _legend, _new_figure, _save

    st = Styles([p["name"] for p in pts], baseline=pts[0]["name"] if len(pts) > 1 else None)
    fig = _new_figure(6, 4.5)
    ax = fig.subplots()
    handles = {}
    for name in st.order([p["name"] for p in pts]):  # labelled in the legend, never on the points
        p = next(q for q in pts if q["name"] == name)
        kw = st.kw(name)
        h = ax.scatter([p["kmacs"]], [p[metric]], s=36, color=kw["color"], marker=kw["marker"], zorder=3)
        handles.setdefault(kw["label"] + (" (baseline)" if name == st.baseline else ""), h)
    ax.set_xscale("log")
    ax.set_xlabel("decoder KMACs / pixel (h_s + context + g_s)")
    ax.set_ylabel(f"{metric} at {bpp:.3f} bpp")
    ax.set_title(title or "rate-distortion-complexity", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig, list(handles.values()), list(handles), len(handles))
    fig.tight_layout()
    return _save(fig, path)
