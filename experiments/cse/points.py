"""Single RD points against the control's Kodak curve, for an arm with too few lambdas for a
BD-rate (the CSE redo's `alpha=1 reg.bin_width=255`, two lambdas): rate change at equal PSNR
and PSNR change at equal rate (codecx.metrics.bdrate.point_deltas: pchip, never extrapolated).

    .venv/bin/python experiments/cse/points.py experiments/cse/ablation/kodak 'reg.bin_width=255' [--seed 1]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from codecx.metrics.bdrate import point_deltas

KEYS = ("bpp", "psnr-rgb", "ms-ssim")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kodak", help="the report's --eval-dir (one results.json per run)")
    ap.add_argument("arm", help="a substring of the arm's run names, e.g. reg.bin_width=255")
    ap.add_argument("--seed", default="1", help="the seed whose control curve is the anchor")
    a = ap.parse_args()
    runs = sorted(Path(a.kodak).glob("*/results.json"))
    control = [json.loads(f.read_text())["results"] for f in runs
               if f"reg=none,seed={a.seed}" in f.parent.name]
    if len(control) < 2:
        raise SystemExit(f"{a.kodak}: found {len(control)} control run(s) reg=none,seed={a.seed}; need >= 2")
    anchor = {"results": {k: [r[k][0] for r in control] for k in KEYS}}
    print("| run | bpp | PSNR dB | rate % at equal PSNR | dB at equal rate |")
    print("|---|---|---|---|---|")
    for f in runs:
        if a.arm not in f.parent.name or f"seed={a.seed}" not in f.parent.name:
            continue
        r = json.loads(f.read_text())["results"]
        point = {k: r[k][0] for k in KEYS}
        d = point_deltas(anchor, point)
        print(f"| {f.parent.name} | {point['bpp']:.4f} | {point['psnr-rgb']:.2f} | {d['delta_rate']:+.2f} | "
              f"{d['delta_psnr']:+.3f} |")


if __name__ == "__main__":
    main()
