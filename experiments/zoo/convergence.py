"""The base zoo's convergence check (issue 16 item 1): Kodak RD of step T against step 0.8T.

    .venv/bin/python experiments/zoo/convergence.py experiments/zoo/kodak/T3200 experiments/zoo/kodak/T4000
    .venv/bin/python experiments/zoo/convergence.py experiments/zoo/kodak/T{4000,6000,8000,10000}

Prints, per lambda, bpp and PSNR at the last two steps given (0.8T, T) and the PSNR gained at the
same rate (the T point against the 0.8T curve's upper envelope, pchip in log rate), then BD-rate /
BD-PSNR of T against 0.8T on PSNR and on MS-SSIM (dB), or why one is undefined (e.g. a
non-monotonic curve), and the BD-rate image by image (over the images of both
per_image.csv files, mean ± t_{0.975,n-1} SE; dropped images named). With more than two folders (a
training curve), also a table of each step against the one before it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from codecx.compare import compare, load_arm
from codecx.metrics.bdrate import delta_quality_at

METRICS = ("psnr-rgb", "ms-ssim")


def load(folder: str) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def bd_cells(early: str, late: str, metric: str) -> tuple:
    """(pooled BD-rate text, BD-quality text, per-image text) of folder `late` against `early`
    on `metric` (codecx.compare, pchip)."""
    row = compare(load_arm(early), [load_arm(late)], methods="pchip", msssim=False, metric=metric)[1]
    if row.error is None:
        pooled, quality = f"{row.values['bd_rate_pchip']:+.2f}%", f"{row.values['bd_psnr_pchip']:+.3f} dB"
    else:
        pooled, quality = f"undefined ({row.error})", "undefined"
    return pooled, quality, str(row.per_image)


def main(*folders: str) -> None:
    early, late = folders[-2:]
    b = load(late)
    ra, rb = load(early)["results"], b["results"]
    print("| lmbda | bpp 0.8T | PSNR 0.8T | bpp T | PSNR T | PSNR T - PSNR 0.8T | dB at the same rate |")
    print("|---|---|---|---|---|---|---|")
    for i, lmbda in enumerate(b.get("lmbda", [None] * len(rb["bpp"]))):
        same = delta_quality_at(ra["bpp"], ra["psnr-rgb"], rb["bpp"][i], rb["psnr-rgb"][i])
        print(f"| {lmbda} | {ra['bpp'][i]:.4f} | {ra['psnr-rgb'][i]:.2f} | {rb['bpp'][i]:.4f} | "
              f"{rb['psnr-rgb'][i]:.2f} | {rb['psnr-rgb'][i] - ra['psnr-rgb'][i]:+.2f} | "
              f"{'outside' if same != same else f'{same:+.2f}'} |")
    for metric in METRICS:
        pooled, quality, per_image = bd_cells(early, late, metric)
        print(f"BD-rate T vs 0.8T on {metric} (pchip): {pooled}, BD-quality {quality}")
        print(f"BD-rate T vs 0.8T on {metric} per image (pchip, ± t·SE, 95%): {per_image}")
    if len(folders) > 2:
        print("\n| from | to | BD-rate PSNR (pchip) | per image (± t·SE, 95%) | BD-rate MS-SSIM (pchip) "
              "| per image (± t·SE, 95%) |")
        print("|---|---|---|---|---|---|")
        for a, b in zip(folders, folders[1:]):
            cells = [c for m in METRICS for c in bd_cells(a, b, m)[::2]]
            print(f"| {Path(a).name} | {Path(b).name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
