"""The base zoo's convergence check (issue 16 item 1): Kodak RD of step T against step 0.8T.

    .venv/bin/python experiments/zoo/convergence.py experiments/zoo/kodak/T3200 experiments/zoo/kodak/T4000

Prints, per lambda, bpp and PSNR at both steps and the PSNR gained at the same rate (the T point
against the 0.8T curve's upper envelope, pchip in log rate), then BD-rate / BD-PSNR of T against
0.8T on PSNR and on MS-SSIM (dB), or why one is undefined (e.g. a non-monotonic curve), and the
BD-rate image by image (mean +- 2 SE over the images of both per_image.csv files).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from codecx.metrics.bdrate import bd_methods, bd_rate_per_image, delta_quality_at, read_per_image


def main(early: str, late: str) -> None:
    a = json.loads((Path(early) / "results.json").read_text())
    b = json.loads((Path(late) / "results.json").read_text())
    ra, rb = a["results"], b["results"]
    print("| lmbda | bpp 0.8T | PSNR 0.8T | bpp T | PSNR T | PSNR T - PSNR 0.8T | dB at the same rate |")
    print("|---|---|---|---|---|---|---|")
    for i, lmbda in enumerate(b.get("lmbda", [None] * len(rb["bpp"]))):
        same = delta_quality_at(ra["bpp"], ra["psnr-rgb"], rb["bpp"][i], rb["psnr-rgb"][i])
        print(f"| {lmbda} | {ra['bpp'][i]:.4f} | {ra['psnr-rgb'][i]:.2f} | {rb['bpp'][i]:.4f} | "
              f"{rb['psnr-rgb'][i]:.2f} | {rb['psnr-rgb'][i] - ra['psnr-rgb'][i]:+.2f} | "
              f"{'outside' if same != same else f'{same:+.2f}'} |")
    for metric in ("psnr-rgb", "ms-ssim"):
        try:
            bd, _ = bd_methods(a, b, metric, "pchip")
            print(f"BD-rate T vs 0.8T on {metric} (pchip): {bd['pchip'].bd_rate:+.2f}%, "
                  f"BD-quality {bd['pchip'].bd_psnr:+.3f} dB")
        except ValueError as e:
            print(f"BD-rate T vs 0.8T on {metric}: undefined ({e})")
        per_image = bd_rate_per_image(read_per_image(Path(early) / "per_image.csv"),
                                      read_per_image(Path(late) / "per_image.csv"), metric)
        print(f"BD-rate T vs 0.8T on {metric} per image (pchip, +- 2 SE): {per_image}")


if __name__ == "__main__":
    main(*sys.argv[1:])
