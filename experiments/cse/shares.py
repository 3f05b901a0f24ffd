"""The regularizer's share of each CSE fine-tune (issue 16 item 3): per run, the mean of
`train/reg_share`, `train/source_bpp`, `train/reg_loss` and `train/psnr` over the last 20% of
its logged steps (the control `reg=none` has only the PSNR).

    .venv/bin/python experiments/cse/shares.py runs/finetune/cse_ablation
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

KEYS = ("train/reg_share", "train/source_bpp", "train/reg_loss", "train/psnr")


def tail_means(metrics: Path) -> dict:
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/psnr")]
    rows = rows[int(0.8 * len(rows)):]
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in KEYS if rows and rows[0].get(k)}


def main(sweep: str) -> None:
    print("| run | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for d in sorted(Path(sweep).iterdir()):
        files = sorted(d.glob("csv/version_*/metrics.csv"))
        if not files:
            continue
        m = tail_means(files[-1])
        name = re.sub(r"base_dir=[^,]*,|experiment=finetune,", "", d.name)
        print(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
