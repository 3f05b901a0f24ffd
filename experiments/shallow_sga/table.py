"""The SGA study's table: BD-rate / BD-PSNR of each arm's RD curve against the first (plain),
mean bpp, PSNR and encode / decode seconds per image, from each arm's eval.py results.json.

    .venv/bin/python experiments/shallow_sga/table.py experiments/shallow_sga/sga plain sga sga_2020
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from codecx.metrics.bdrate import bd_methods

PAPER = {"sga": "-8.8 (000 tab. 7, hyperprior); ~-15 (mean-scale, Kodak)",
         "sga_2020": "-8.8 (000 tab. 7, hyperprior)"}


def main(out: str, base: str, *arms: str) -> None:
    load = lambda a: json.loads((Path(out) / a / "results.json").read_text())  # noqa: E731
    anchor = load(base)
    print("| arm | BD-rate % (pchip) | BD-rate % (cubic) | BD-PSNR dB (pchip) | paper BD-rate % | mean bpp | "
          "mean PSNR dB | enc s / img | dec s / img |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in (base, *arms):
        p = Path(out) / arm / "results.json"
        if not p.is_file():
            print(f"| {arm} | not run | | | | | | | |")
            continue
        res = load(arm)
        r = res["results"]
        mean = lambda k: sum(r[k]) / len(r[k])  # noqa: E731
        if arm == base:
            cells = ["0 (baseline)", "0", "0"]
        else:
            try:
                bd, _ = bd_methods(anchor, res, "psnr-rgb", "both")
                cells = [f"{bd['pchip'].bd_rate:+.2f}", f"{bd['cubic'].bd_rate:+.2f}" if "cubic" in bd else "-",
                         f"{bd['pchip'].bd_psnr:+.3f}"]
            except ValueError as e:  # e.g. a non-monotonic curve: say why, keep the other columns
                cells = [f"undefined ({e})", "-", "-"]
        print(f"| {arm} | " + " | ".join(cells) + f" | {PAPER.get(arm, '-')} | {mean('bpp'):.4f} | "
              f"{mean('psnr-rgb'):.2f} | {mean('encoding_time'):.2f} | {mean('decoding_time'):.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
