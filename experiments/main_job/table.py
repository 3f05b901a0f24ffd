"""The table of the main-job recipes (docs, "Training": "The main job"): per recipe run dir under
runs/recipes/, its real-bitstream bpp / PSNR on the sample validation photos (results.json),
JPEG's and WebP's PSNR at that bpp on the same photos (codecx.metrics.anchors.classical_at),
the gaps, and the wall time the recipe runner measured (time.txt)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from codecx.data import ImageDataModule
from codecx.evaluate import dataset_images
from codecx.metrics.anchors import classical_at

ROOT = Path(__file__).resolve().parents[2]


def main(runs=ROOT / "runs" / "recipes") -> None:
    dm = ImageDataModule(source="sample")
    dm.setup("validate")
    images = dataset_images(dm.val_set)
    print("| recipe | wall s | bpp | PSNR dB | JPEG dB | gap JPEG | WebP dB | gap WebP |")
    print("|---|---|---|---|---|---|---|---|")
    for d in sorted(Path(runs).iterdir()):
        res = d / "results.json"
        if not res.is_file():
            continue
        r = json.loads(res.read_text())["results"]
        bpp, psnr = r["bpp"][0], r["psnr-rgb"][0]
        t = (d / "time.txt").read_text() if (d / "time.txt").is_file() else ""
        wall = re.search(r"wall_s=([0-9.]+)", t)
        cells = [d.name, f"{float(wall.group(1)):.0f}" if wall else "?", f"{bpp:.3f}", f"{psnr:.2f}"]
        for codec in ("jpeg", "webp"):
            at = classical_at(images, bpp, codec)
            cells += [f"{at['psnr']:.2f}", f"{psnr - at['psnr']:+.2f}"] if at["psnr"] is not None else ["n/a", "n/a"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
