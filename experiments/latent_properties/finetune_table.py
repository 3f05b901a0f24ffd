"""The lattice fine-tune table (issue 16 item 4, `finetune.sh`): BD-rate of each pair of Kodak
curves in OUT (control_scalar, control_hex, hex_finetuned) with the per-image band (codecx.compare).
With several seeds (`SEEDS=1,2,3 finetune.sh`: OUT/NAME is seed 1, OUT/NAME_seed<s> seed s) each
arm is paired with its anchor seed by seed (the mean, and every seed's figure), and the control's
seed band (every other seed of control_scalar against seed 1) is printed first (issue 29 item 2).

    .venv/bin/python experiments/latent_properties/finetune_table.py experiments/latent_properties/finetune
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, Optional

from codecx.compare import Arm, compare, load_arm

PAIRS = [("control_hex", "control_scalar", "decode-time Hex on the fine-tuned control",
          "-0.88 (t.1), -0.748 (t.5); pretrained, no retraining"),
         ("hex_finetuned", "control_scalar", "Hex fine-tuned, against the scalar control", "-"),
         ("hex_finetuned", "control_hex", "what fine-tuning with Hex adds", "-")]


def seeds_of(out: Path, name: str) -> Dict[str, Path]:
    """{seed: folder} of an arm: OUT/NAME is seed 1, OUT/NAME_seed<s> seed s (evaluated ones only)."""
    found = {"1": out / name} if (out / name / "results.json").is_file() else {}
    for d in sorted(out.glob(f"{name}_seed*")):
        m = re.fullmatch(re.escape(name) + r"_seed(\d+)", d.name)
        if m and (d / "results.json").is_file():
            found[m.group(1)] = d
    return found


def arm_of(out: Path, name: str, replicated: bool) -> Optional[Arm]:
    """The arm of NAME: its seed-1 curve, or (replicated) one curve per seed."""
    s = seeds_of(out, name)
    if "1" not in s:
        return None
    return load_arm(name=name, replicates=s) if replicated else load_arm(s["1"], name=name)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    # replicated when an arm of the fine-tune was run at more than one seed (the control's
    # control_scalar_seed2 alone, issue 16's seed band, does not make the table replicated)
    replicated = len(seeds_of(out, "hex_finetuned")) > 1
    if replicated:
        base = arm_of(out, "control_scalar", True)
        seed_band = compare(base, [], msssim=False)[0]
        print(f"Seed band of the control (control_scalar, seeds {', '.join(base.replicates)}; each seed against "
              "seed 1, BD-rate % pchip): " + ", ".join(f"{lab}: {v:+.2f}" for lab, v in seed_band.each.get(
                  "bd_rate_pchip", []))
              + ("" if seed_band.per_image is None else f"; per image {seed_band.per_image_text()}")
              + "\n")
    print("| arm | anchor | what | BD-rate % (pchip) | BD-rate % (cubic) | BD-PSNR dB | "
          + ("BD-rate % by seed | " if replicated else "") + "per image (± t·SE, 95%) | "
          "paper BD-rate % | arm mean bpp | arm mean PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if replicated else ""))
    for arm, anchor, what, paper in PAIRS:
        a, b = arm_of(out, arm, replicated), arm_of(out, anchor, replicated)
        if a is None or b is None:
            print(f"| {arm} | {anchor} | {what} | not run | | | " + ("| " if replicated else "")
                  + f"| {paper} | | |")
            continue
        row = compare(b, [a], msssim=False)[1]
        v = row.values
        cells = [f"undefined ({row.error})", "-", "-"] if row.error else [
            f"{v['bd_rate_pchip']:+.2f}", f"{v['bd_rate_cubic']:+.2f}" if "bd_rate_cubic" in v else "-",
            f"{v['bd_psnr_pchip']:+.3f}"]
        if replicated:
            cells.append(", ".join(f"{lab}: {x:+.2f}" for lab, x in row.each.get("bd_rate_pchip", [])))
        print(f"| {arm} | {anchor} | {what} | " + " | ".join(cells) + f" | {row.per_image_text()} | {paper} | "
              f"{row.curve.mean('bpp'):.4f} | {row.curve.mean('psnr-rgb'):.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
