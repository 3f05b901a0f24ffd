"""GAN regularizers: stage-2 training-step time of reg=illm and reg=patchgan over reg=none.

What is compared: the stage-2 step of MS-ILLM / HiFiC (only `g_s` trains, plus the
discriminator in its own phase: `schedule.stages=[{trainable: [g_s, discriminator]}]`) on the
same model and batches, each variant the real `LitCodec` under `pl.Trainer.fit` built from
the Hydra config of `python train.py` (mbt_mean N=128, M=192, batch 8 of 256-px crops by
default, `distortion=mse`, as in bench_cse), with

- **none**: `reg=none`, the decoder fine-tuned on R + lambda D alone;
- **patchgan**: `reg=patchgan` (HiFiC's spectral-norm conditional PatchGAN, ~2.8M parameters
  with M=192): + the generator term and one D step per codec step;
- **illm**: `reg=illm` with the released-size U-Net D (~18M parameters, 1025 logits at 1/8)
  and a random-init full-size labeler (its labels of the batch are part of the step).

Same initial codec weights, same preloaded batches, same thread count; variants in their own
processes, alternating rounds. Reported: the ratio of median step times illm/none and
patchgan/none (no target: the U-Net D is several times the decoder's cost; MS-ILLM trains it
on GPUs), the CPU-time ratios and absolute ms/step.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from benchmarks import Row
from benchmarks import bench_train_step as ts

DEFAULTS = {"steps": 3, "warmup": 2, "rounds": 2}
QUICK = {"steps": 1, "warmup": 1, "rounds": 1}
VARIANTS = ("none", "patchgan", "illm")


def _stage(trainable: str) -> str:
    return f"+schedule.stages=[{{name:gan,steps:null,trainable:[{trainable}]}}]"


def add_arguments(group) -> None:
    group.add_argument("--gan-batch-size", type=int, default=8, help="gan: images per batch")
    group.add_argument("--gan-crop", type=int, default=256, help="gan: crop size (px, a multiple of 64)")
    group.add_argument("--gan-N", type=int, default=128, help="gan: mbt_mean N")
    group.add_argument("--gan-M", type=int, default=192, help="gan: mbt_mean M")
    group.add_argument("--gan-d-channels", default=None,
                       help="gan: U-Net D widths, e.g. 16,16,32,32,64,64 (default: the released 18M D)")
    group.add_argument("--gan-data", default=None, help="gan: image folder for the crops")


def run(args) -> List[Row]:
    spec, rounds = ts.step_spec(args, args.gan_N, args.gan_M, args.gan_batch_size, args.gan_crop,
                                DEFAULTS, QUICK)
    if spec["crop"] % 64:
        raise ValueError(f"--gan-crop {spec['crop']}: the U-Net D needs a multiple of 64")
    steps, warmup = spec["steps"], spec["warmup"]
    print(f"mbt_mean N={spec['N']} M={spec['M']}, batch {spec['batch']} x {spec['crop']} px, "
          f"{spec['device']}, {spec['threads']} threads: stage 2 (g_s + discriminator) with reg=none, "
          f"patchgan, illm; {rounds} round(s) x ({warmup} warm-up + {steps} measured) steps per variant",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="codecx-bench-gan-") as tmp:
        tmp = Path(tmp)
        spec.update(ts.prepare(tmp, spec, args.gan_data))
        import torch

        from codecx.regularizers.labeler import VQLabeler

        torch.manual_seed(spec["seed"])
        VQLabeler().save(tmp / "labeler.pt")
        d = [f"reg.channels=[{args.gan_d_channels}]"] if args.gan_d_channels else []
        overrides = {"none": ["reg=none", _stage("g_s")],
                     "patchgan": ["reg=patchgan", _stage("g_s,discriminator")],
                     "illm": ["reg=illm", f"reg.labeler={tmp / 'labeler.pt'}", *d,
                              _stage("g_s,discriminator")]}
        timing = ts.alternating_rounds("gan", spec, tmp, rounds, VARIANTS, overrides, __name__)
    return summarize(timing)


def summarize(timing: Dict[str, List[dict]]) -> List[Row]:
    pool = lambda key, v: [t for res in timing[v] for t in res[key]]  # noqa: E731
    med = {v: ts._median(pool("step_s", v)) for v in VARIANTS}
    cpu = {v: ts._median(pool("cpu_s", v)) for v in VARIANTS}
    print(f"\n  measured: one stage-2 LitCodec step (codec phase with g_s trainable, D phase), "
          f"median of {len(pool('step_s', 'none'))} steps per variant")
    for v in VARIANTS:
        print(f"    {v:8s} {1e3 * med[v]:9.1f} ms/step  CPU {1e3 * cpu[v]:9.1f} ms  "
              f"D parameters {timing[v][0]['d_params'] / 1e6:.2f}M")
    rows = []
    for v in ("patchgan", "illm"):
        per_round = [statistics.median(a["step_s"]) / statistics.median(n["step_s"])
                     for n, a in zip(timing["none"], timing[v])]
        print(f"    ratio {v}/none {med[v] / med['none']:.2f} (per round: "
              + ", ".join(f"{x:.2f}" for x in per_round) + ")")
        rows += [Row(f"step time ratio {v}/none", med[v] / med["none"], None, "ratio",
                     note=f"stage 2, D {timing[v][0]['d_params'] / 1e6:.1f}M params"),
                 Row(f"CPU time ratio {v}/none", cpu[v] / cpu["none"], None, "ratio")]
    rows += [Row(f"{v} step", 1e3 * med[v], None, "ms") for v in VARIANTS]
    return rows


def worker_gan(spec: dict) -> Dict[str, dict]:
    """One variant timed under Trainer.fit."""
    meter, _, module = ts.timed_fit(spec, spec["variant"])
    d = getattr(module.regularizer, "discriminator", None) if module.regularizer is not None else None
    n = sum(p.numel() for p in d.parameters()) if d is not None else 0
    return {spec["variant"]: dict(meter.result(), d_params=n)}


if __name__ == "__main__":
    ts._worker_main(sys.argv[1:], {"gan": worker_gan})
