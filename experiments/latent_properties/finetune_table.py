"""The lattice fine-tune table (issue 16 item 4, `finetune.sh`): BD-rate of each pair of Kodak
curves in OUT (control_scalar, control_hex, hex_finetuned) with the per-image band (codecx.compare).

    .venv/bin/python experiments/latent_properties/finetune_table.py experiments/latent_properties/finetune
"""
from __future__ import annotations

import sys
from pathlib import Path

from codecx.compare import compare, load_arm

PAIRS = [("control_hex", "control_scalar", "decode-time Hex on the fine-tuned control",
          "-0.88 (t.1), -0.748 (t.5); pretrained, no retraining"),
         ("hex_finetuned", "control_scalar", "Hex fine-tuned, against the scalar control", "-"),
         ("hex_finetuned", "control_hex", "what fine-tuning with Hex adds", "-")]


def main(out: str) -> None:
    print("| arm | anchor | what | BD-rate % (pchip) | BD-rate % (cubic) | BD-PSNR dB | per image (± t·SE, 95%) | "
          "paper BD-rate % | arm mean bpp | arm mean PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, anchor, what, paper in PAIRS:
        if not all((Path(out) / f / "results.json").is_file() for f in (anchor, arm)):
            print(f"| {arm} | {anchor} | {what} | not run | | | | {paper} | | |")
            continue
        row = compare(load_arm(Path(out) / anchor), [load_arm(Path(out) / arm)], msssim=False)[1]
        v = row.values
        cells = [f"undefined ({row.error})", "-", "-"] if row.error else [
            f"{v['bd_rate_pchip']:+.2f}", f"{v['bd_rate_cubic']:+.2f}" if "bd_rate_cubic" in v else "-",
            f"{v['bd_psnr_pchip']:+.3f}"]
        print(f"| {arm} | {anchor} | {what} | " + " | ".join(cells) + f" | {row.per_image} | {paper} | "
              f"{row.curve.mean('bpp'):.4f} | {row.curve.mean('psnr-rgb'):.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
