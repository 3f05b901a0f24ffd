"""Single RD points against the control's Kodak curve, for an arm with too few lambdas for a
BD-rate (the CSE redo's `alpha=1 reg.bin_width=255`, two lambdas): rate change at equal PSNR
and PSNR change at equal rate (codecx.compare's one-point form: pchip, never extrapolated).

    .venv/bin/python experiments/cse/points.py experiments/cse/ablation/kodak 'reg.bin_width=255' [--seed 1]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from codecx.compare import compare, load_arm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kodak", help="the report's --eval-dir (one results.json per run)")
    ap.add_argument("arm", help="a substring of the arm's run names, e.g. reg.bin_width=255")
    ap.add_argument("--seed", default="1", help="the seed whose control curve is the anchor")
    a = ap.parse_args()
    runs = sorted(f.parent for f in Path(a.kodak).glob("*/results.json"))
    control = [d for d in runs if f"reg=none,seed={a.seed}" in d.name]
    if len(control) < 2:
        raise SystemExit(f"{a.kodak}: found {len(control)} control run(s) reg=none,seed={a.seed}; need >= 2")
    arms = [load_arm(d, name=d.name) for d in runs if a.arm in d.name and f"seed={a.seed}" in d.name]
    rows = compare(load_arm(*control, name="control"), arms, per_image=False, methods="pchip", msssim=False,
                   one_point=True)
    print("| run | bpp | PSNR dB | rate % at equal PSNR | dB at equal rate |")
    print("|---|---|---|---|---|")
    for row in rows[1:]:
        r = row.curve.results["results"]
        print(f"| {row.name} | {r['bpp'][0]:.4f} | {r['psnr-rgb'][0]:.2f} | {row.values['bd_rate_pchip']:+.2f} | "
              f"{row.values['bd_psnr_pchip']:+.3f} |")


if __name__ == "__main__":
    main()
