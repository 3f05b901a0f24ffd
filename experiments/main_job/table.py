"""The table of the main-job recipes (docs, "Training": "The main job"), through `codecx.compare`
(issue 31): per recipe (`recipes/<name>/`: its run's `results.json`, real-bitstream bpp / PSNR on
the sample validation photos, and `time.txt`), the PSNR of JPEG and WebP at the same rate and the
gap, each codec's dense quality sweep on the same photos (codecx.metrics.anchors.classical_anchor)
as the baseline curve: compare's one-point form (PSNR change at equal rate on the baseline's
pchip curve, never extrapolated: n/a outside the codec's rates), and the wall time the recipe
runner measured.

    .venv/bin/python experiments/main_job/table.py [RECIPES_DIR] > experiments/main_job/table.md

RECIPES_DIR (default experiments/main_job/recipes, where recipes.sh copies each run's
results.json and time.txt; runs/recipes holds the runs themselves).
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from codecx.compare import compare, load_arm
from codecx.data import ImageDataModule
from codecx.eval.loop import dataset_images
from codecx.metrics.anchors import classical_anchor, dense_qualities

HERE = Path(__file__).resolve().parent
CODECS = ("jpeg", "webp")


def main(recipes=HERE / "recipes") -> None:
    runs = sorted(f.parent for f in Path(recipes).glob("*/results.json"))
    if not runs:
        raise SystemExit(f"{recipes}: no <recipe>/results.json; run experiments/main_job/recipes.sh first "
                         "(it copies each run's results.json and time.txt there)")
    dm = ImageDataModule(source="sample")
    dm.setup("validate")
    images = dataset_images(dm.val_set)
    arms = [load_arm(d, name=d.name) for d in runs]
    gaps = {c: compare(classical_anchor(images, c, qualities=dense_qualities(c), msssim=False), arms,
                       per_image=False, methods="pchip", msssim=False, one_point=True)[1:] for c in CODECS}
    print("| recipe | wall s | bpp | PSNR dB | JPEG dB | gap JPEG | WebP dB | gap WebP |")
    print("|---|---|---|---|---|---|---|---|")
    for i, d in enumerate(runs):
        r = arms[i].curve.results["results"]
        bpp, psnr = r["bpp"][0], r["psnr-rgb"][0]
        t = (d / "time.txt").read_text() if (d / "time.txt").is_file() else ""
        wall = re.search(r"wall_s=([0-9.]+)", t)
        cells = [d.name, f"{float(wall.group(1)):.0f}" if wall else "?", f"{bpp:.3f}", f"{psnr:.2f}"]
        for c in CODECS:
            gap = gaps[c][i].values["bd_psnr_pchip"]
            cells += ["n/a", "n/a"] if math.isnan(gap) else [f"{psnr - gap:.2f}", f"{gap:+.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
