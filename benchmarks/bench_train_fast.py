"""Training step with trainer.channels_last / trainer.compile against the eager plain PyTorch loop (issue 33 item 3).

What is compared: mbt_mean at the main job's size (N=64, M=96; the issue's measurement), batch
8 of 128-px crops, `LitCodec.training_step` under `pl.Trainer.fit` (bench_train_step's
`_fit_codecx`: the `python train.py` config, the same initial weights, batches and noise) with
the speed-ups of `codecx.lit.speed` switched on, against bench_train_step's plain loop
(CompressAI's MeanScaleHyperprior, eager, contiguous batches) doing the same work.

Two configurations, each in its own process in bench_train_step's paired mode (the plain step
and codecx's step alternate step by step, so both see the same load on a shared machine):
`trainer.channels_last=true trainer.compile=false` and `trainer.channels_last=true
trainer.compile=true`. Reported: the step-time ratios (medians of the measured steps), the
compile warm-up (the first compiled step minus a compiled step's median), the number of steps
after which the warm-up is paid back (warm-up / (plain step - compiled step)), and the largest
relative difference between the losses of the same step (same work: float tolerance only).
`--device cuda` (or auto with a GPU) runs both variants on the GPU.
"""
from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

from benchmarks import Row
from benchmarks import bench_train_step as ts

DEFAULTS = {"steps": 10, "warmup": 2, "rounds": 2}   # paired: 20 measured steps per configuration
QUICK = {"steps": 2, "warmup": 1, "rounds": 1}
TIME_TARGET, LOSS_TARGET = 0.85, 1e-3
CONFIGS = {"channels_last": ["trainer.channels_last=true", "trainer.compile=false"],
           "channels_last+compile": ["trainer.channels_last=true", "trainer.compile=true"]}


def add_arguments(group) -> None:
    group.add_argument("--tf-batch-size", type=int, default=8, help="train_fast: images per batch")
    group.add_argument("--tf-crop", type=int, default=128, help="train_fast: crop size (px)")
    group.add_argument("--tf-N", type=int, default=64, help="train_fast: mbt_mean N")
    group.add_argument("--tf-M", type=int, default=96, help="train_fast: mbt_mean M")
    group.add_argument("--tf-configs", default=",".join(CONFIGS),
                       help=f"train_fast: which configurations ({', '.join(CONFIGS)})")


def run(args) -> List[Row]:
    spec, rounds = ts.step_spec(args, args.tf_N, args.tf_M, args.tf_batch_size, args.tf_crop, DEFAULTS, QUICK)
    spec["steps"] *= rounds  # paired: one process per configuration, alternating step by step
    configs = [c.strip() for c in args.tf_configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"--tf-configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    print(f"mbt_mean N={spec['N']} M={spec['M']}, batch {spec['batch']} x {spec['crop']} px, {spec['device']}, "
          f"{spec['threads']} threads; paired with the eager plain loop: {spec['warmup']} warm-up + "
          f"{spec['steps']} measured steps per configuration", flush=True)
    results: Dict[str, Dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="codecx-bench-") as tmp:
        tmp = Path(tmp)
        spec.update(ts.prepare(tmp, spec, None))
        for i, name in enumerate(configs):
            res = ts.spawn("paired", dict(spec, variant=f"fast{i}", overrides=CONFIGS[name]), tmp, 0)
            results[name] = res
            for v in ts.VARIANTS:
                ts._print_run(name, v, res[v])
    return summarize(results)


def summarize(results: Dict[str, Dict[str, dict]]) -> List[Row]:
    rows: List[Row] = []
    for name, res in results.items():
        plain, fast = res["plain"], res["codecx"]
        med_p, med_f = statistics.median(plain["step_s"]), statistics.median(fast["step_s"])
        pairs = [f / p for p, f in zip(plain["step_s"], fast["step_s"])]
        rel = max(abs(f - p) / abs(p) for p, f in zip(plain["losses"], fast["losses"]))
        cpu = statistics.median(fast["cpu_s"]) / statistics.median(plain["cpu_s"])
        print(f"\n  {name}: plain {1e3 * med_p:.1f} ms/step, codecx {1e3 * med_f:.1f} ms/step, ratio "
              f"{med_f / med_p:.3f} (step by step: median {statistics.median(pairs):.3f}); CPU time ratio "
              f"{cpu:.3f}; losses differ by at most {rel:.1e} (relative) over {len(plain['losses'])} steps")
        compiled = "compile" in name
        rows += [Row(f"step time ratio codecx {name} / plain eager", med_f / med_p,
                     TIME_TARGET if compiled else None, "ratio", note="medians of paired steps"),
                 Row(f"loss max rel. diff ({name} vs eager)", rel, LOSS_TARGET, "rel")]
        if compiled:
            warmup = fast["first_s"] - med_f
            saved = med_p - med_f
            pays = warmup / saved if saved > 0 else math.inf
            print(f"  torch.compile warm-up: first step {fast['first_s']:.1f} s ({warmup:.1f} s more than a "
                  f"compiled step); it pays after {pays:.0f} steps ({1e3 * saved:.0f} ms saved a step)")
            rows += [Row("compile warm-up (first step - a step)", warmup, None, "s"),
                     Row("compile pays after", pays, None, "steps", note="warm-up / time saved per step")]
    return rows
