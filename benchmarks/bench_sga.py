"""SGA over a batch (issue 33 item 5): seconds per 100 steps per image, batch 1 against batch 8.

What is measured: `SGA` (Yang, Bamler, Mandt 2020, arXiv 2006.04240; codecx.inference.sga)
optimising the latents of Kodak crops (`--sgab-crop`, default 128 px; --quick 64) of an mbt_mean
N=64, M=96 (random weights: the time per step does not depend on them), `--steps` steps (default
10; --quick 3), on the CPU one thread unless `--threads` (two threads on a loaded 2-core machine
wait on each other and drown the comparison), keep_best off (the real coding of the two
candidates is a per-image cost, not a per-step one). Batch 1 refines one crop, batch 8 eight
crops of one size in one call (one walk of the codec per step for all eight: what
`refine.sga.batch_size=8` makes `codecx eval` do).
Rounds alternate the two (1, 8, 8, 1, ...); each figure is the median over rounds. Rows: the
seconds per 100 steps per image of each, and their ratio (batch 8 / batch 1; below 1: batching
pays). Informational (no target): on a CPU the convolutions of one image already fill the
cores, on a GPU one image leaves most of it idle.
"""
from __future__ import annotations

import os
import statistics
from typing import List

from benchmarks import Row, timed, torch_device
from benchmarks._images import kodak_images

DEFAULTS = {"rounds": 5, "steps": 10, "crop": 128}
QUICK = {"rounds": 1, "steps": 3, "crop": 64}
BATCHES = (1, 8)


def add_arguments(group) -> None:
    group.add_argument("--sgab-crop", type=int, default=None,
                       help="sga: Kodak crop size in px (default 128; --quick 64)")


def run(args) -> List[Row]:
    import torch

    from codecx.inference.sga import SGA
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import NoiseQuantizer

    s = QUICK if args.quick else DEFAULTS
    rounds, steps = args.rounds or s["rounds"], args.steps or s["steps"]
    crop = args.sgab_crop or s["crop"]
    device = torch_device(args)
    if device == "cpu" and not args.threads:
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    codec = Codec(build_backbone("mbt_mean", 64, 96), NoiseQuantizer(), lmbda=0.0067).to(device).eval()
    xs = torch.cat(kodak_images(max(BATCHES), crop)).to(device)
    if xs.size(0) < max(BATCHES) or tuple(xs.shape[-2:]) != (crop, crop):
        raise RuntimeError(f"sga: needs {max(BATCHES)} images of at least {crop}x{crop} px, got {tuple(xs.shape)}")
    latents = {b: codec.encoder_latents(xs[:b]) for b in BATCHES}
    sga = SGA(steps=steps, keep_best=False)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"sga: {rounds} round(s) of {steps} steps, {crop}-px crops, device={device}, "
          f"threads={torch.get_num_threads()}, load {load:.1f}", flush=True)
    refine = lambda b: sga(xs[:b], codec.view, *latents[b], codec.lmbda)  # noqa: E731
    for b in BATCHES:  # warm-up (allocator, oneDNN / cuDNN kernel choice)
        SGA(steps=1, keep_best=False)(xs[:b], codec.view, *latents[b], codec.lmbda)
    per100 = {b: [] for b in BATCHES}
    for r in range(rounds):
        for b in (BATCHES if r % 2 == 0 else BATCHES[::-1]):
            per100[b].append(timed(lambda: refine(b), device) * 100 / steps / b)
    med = {b: statistics.median(v) for b, v in per100.items()}
    note = f"{crop}-px crops, mbt_mean 64/96, {steps} steps, {device}, load {load:.1f}"
    rows = [Row(f"sga_s_per_100_steps_per_image_batch{b}", med[b], None, "s", note) for b in BATCHES]
    rows.append(Row("sga_batch8_vs_batch1_per_image", statistics.median(
        a / b for a, b in zip(per100[8], per100[1])), None, "ratio", "median of per-round ratios; < 1: batching pays"))
    return rows
