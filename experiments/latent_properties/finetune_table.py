"""The lattice fine-tune table (issue 16 item 4, `finetune.sh`): BD-rate of each pair of Kodak
curves in OUT (control_scalar, control_hex, hex_finetuned) with the per-image band.

    .venv/bin/python experiments/latent_properties/finetune_table.py experiments/latent_properties/finetune
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shallow_sga"))
from table import bd_cells, bd_per_image, load, mean  # noqa: E402  (the SGA study's table helpers)

PAIRS = [("control_hex", "control_scalar", "decode-time Hex on the fine-tuned control",
          "-0.88 (t.1), -0.748 (t.5); pretrained, no retraining"),
         ("hex_finetuned", "control_scalar", "Hex fine-tuned, against the scalar control", "-"),
         ("hex_finetuned", "control_hex", "what fine-tuning with Hex adds", "-")]


def main(out: str) -> None:
    print("| arm | anchor | what | BD-rate % (pchip) | BD-rate % (cubic) | BD-PSNR dB | per image (± t·SE, 95%) | "
          "paper BD-rate % | arm mean bpp | arm mean PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, anchor, what, paper in PAIRS:
        a, b = load(Path(out) / anchor), load(Path(out) / arm)
        if a is None or b is None:
            print(f"| {arm} | {anchor} | {what} | not run | | | | {paper} | | |")
            continue
        print(f"| {arm} | {anchor} | {what} | " + " | ".join(bd_cells(a, b)) +
              f" | {bd_per_image(Path(out) / anchor, Path(out) / arm)} | {paper} | {mean(b, 'bpp'):.4f} | "
              f"{mean(b, 'psnr-rgb'):.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
