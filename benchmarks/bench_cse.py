"""CSE regularizer: training-step time of reg=cse (alpha=1) over reg=none, mbt_mean.

What is compared: mbt_mean (N=128, M=192) at batch 8 of 256-px crops, both variants the real
`LitCodec` under `pl.Trainer.fit`, built from the Hydra config of `python train.py` exactly as
in `bench_train_step` (`model=mbt_mean quantizer=noise schedule=compressai`, no logger,
checkpoints or validation), with

- **none**: `reg=none`, the plain rate-distortion step (codec phase + entropy-bottleneck aux);
- **cse**: `reg=cse alpha=1`, the same plus Algorithm 1 of the CSE paper: the codec-phase term
  `-alpha H(X|X_hat)` through q_theta (theta fixed) and the extra auxiliary phase "source" that
  fits q_theta by maximum likelihood (eq. 13); q_theta is the hyperprior-aligned Gaussian model.

Same initial codec weights, same preloaded batches (in memory, on the device: data loading is
not measured), same torch thread count, noise seeded per step outside the timed region. Each
variant runs in its own processes, in alternating rounds (none, cse, cse, none, ...); a
Callback takes `perf_counter` at `on_train_batch_start` / `on_train_batch_end`. Reported: the
ratio of median step times (target <= 1.10; the paper's hyperprior model pays +19.5%), the
process CPU-time ratio and absolute ms/step. Check that both start from the same point: at
step 1 (same weights and noise), cse's loss + alpha * source_bpp equals none's R + lambda D.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from benchmarks import Row
from benchmarks import bench_train_step as ts

DEFAULTS = {"steps": 5, "warmup": 3, "rounds": 4}   # 20 measured steps per variant
QUICK = {"steps": 2, "warmup": 1, "rounds": 2}
TIME_TARGET = 1.10
PAPER_OVERHEAD = 0.195  # CSE paper, hyperprior model
ALPHA = 1.0
VARIANTS = ("none", "cse")
OVERRIDES = {"none": ["reg=none"], "cse": ["reg=cse", f"alpha={ALPHA}"]}


def add_arguments(group) -> None:
    group.add_argument("--cse-batch-size", type=int, default=8, help="cse: images per batch")
    group.add_argument("--cse-crop", type=int, default=256, help="cse: crop size (px)")
    group.add_argument("--cse-N", type=int, default=128, help="cse: mbt_mean N")
    group.add_argument("--cse-M", type=int, default=192, help="cse: mbt_mean M")
    group.add_argument("--cse-data", default=None,
                       help="cse: image folder for the crops (default: ../shared/data/train if "
                            "present, else the embedded sample photos)")


# ---------------------------------------------------------------------------- parent side
def run(args) -> List[Row]:
    spec, rounds = ts.step_spec(args, args.cse_N, args.cse_M, args.cse_batch_size, args.cse_crop,
                                DEFAULTS, QUICK)
    steps, warmup, device, threads = spec["steps"], spec["warmup"], spec["device"], spec["threads"]
    print(f"mbt_mean N={spec['N']} M={spec['M']}, batch {spec['batch']} x {spec['crop']} px, "
          f"{device}, {threads} threads: reg=none vs reg=cse alpha={ALPHA:g}, each LitCodec under "
          f"Trainer.fit in its own process; {rounds} round(s) x ({warmup} warm-up + {steps} "
          f"measured) steps per variant, order none,cse / cse,none alternating", flush=True)

    with tempfile.TemporaryDirectory(prefix="codecx-bench-cse-") as tmp:
        tmp = Path(tmp)
        spec.update(ts.prepare(tmp, spec, args.cse_data))
        timing = ts.alternating_rounds("reg", spec, tmp, rounds, VARIANTS, OVERRIDES, __name__)
    return summarize(timing)


def summarize(timing: Dict[str, List[dict]]) -> List[Row]:
    pool = lambda key, v: [t for res in timing[v] for t in res[key]]  # noqa: E731
    med = {v: ts._median(pool("step_s", v)) for v in VARIANTS}
    cpu = {v: ts._median(pool("cpu_s", v)) for v in VARIANTS}
    peak = {v: ts._median(res["peak_bytes"] for res in timing[v]) for v in VARIANTS}
    ratio, cpu_ratio = med["cse"] / med["none"], cpu["cse"] / cpu["none"]
    per_round = [statistics.median(c["step_s"]) / statistics.median(n["step_s"])
                 for n, c in zip(timing["none"], timing["cse"])]
    # same start: step 1 has the same weights, batch and noise, so R + lambda D agree
    starts = [(n["losses"][0], c["losses"][0] + ALPHA * c["source_bpp"][0])
              for n, c in zip(timing["none"], timing["cse"])]
    same = max(abs(c - n) / abs(n) for n, c in starts)
    cse = timing["cse"][0]
    bpp = [b for res in timing["cse"] for b in res["source_bpp"][res["spec_warmup"]:]]
    n_steps = len(pool("step_s", "none"))
    kind = timing["none"][0]["memory_kind"]

    print(f"\n  measured: one LitCodec training step (on_train_batch_start -> on_train_batch_end: "
          f"codec phase, aux phase(s), logging), median of {n_steps} steps per variant")
    print(f"    none {1e3 * med['none']:9.1f} ms/step   (reg=none: R + lambda D, quantile aux phase)")
    print(f"    cse  {1e3 * med['cse']:9.1f} ms/step   (reg=cse alpha={ALPHA:g}: + q_theta term and "
          f"its ML phase; {cse['regularizer']}, source model {cse['source_model']!r})")
    print(f"    ratio cse/none {ratio:.3f} (target <= {TIME_TARGET}; CSE paper: "
          f"{1 + PAPER_OVERHEAD:.3f} for its hyperprior model); per round: "
          + ", ".join(f"{x:.3f}" for x in per_round))
    print(f"  process CPU time per step (all threads): none {1e3 * cpu['none']:.1f} ms, "
          f"cse {1e3 * cpu['cse']:.1f} ms, ratio {cpu_ratio:.3f}")
    print(f"  memory ({'max_memory_allocated' if kind == 'cuda' else 'peak RSS growth'}): none "
          f"{peak['none'] / 2**20:.0f} MiB, cse {peak['cse'] / 2**20:.0f} MiB")
    print(f"  regularizer active: source_bpp (-log2 q_theta(X|X_hat)) median {ts._median(bpp):.3f} "
          f"bits/pixel; same start: step-1 R + lambda D differ by {same:.1e} (relative)")
    return [
        Row("step time ratio cse/none", ratio, TIME_TARGET, "ratio", note=f"reg=cse alpha={ALPHA:g}"),
        Row("CPU time ratio cse/none", cpu_ratio, None, "ratio", note="process CPU time per step"),
        Row("peak memory ratio cse/none", peak["cse"] / peak["none"], None, "ratio"),
        Row("cse step", 1e3 * med["cse"], None, "ms"),
        Row("none step", 1e3 * med["none"], None, "ms"),
        Row("step-1 R+lambda*D rel. diff (same start)", same, 1e-3, "rel"),
    ]


# ---------------------------------------------------------------------------- worker side
def worker_reg(spec: dict) -> Dict[str, dict]:
    """One variant (`spec["variant"]`, Hydra `spec["overrides"]`) timed under Trainer.fit."""
    import torch

    torch.manual_seed(spec["seed"])  # q_theta's initialisation (the codec's is loaded)
    source_bpp: List[float] = []

    def on_end(trainer, pl_module):  # untimed: the step's logged -log2 q_theta(X|X_hat)
        v = trainer.callback_metrics.get("train/source_bpp")
        source_bpp.append(float("nan") if v is None else float(v))

    meter, _, module = ts.timed_fit(spec, spec["variant"], on_end)
    reg = module.regularizer
    res = dict(meter.result(), regularizer=type(reg).__name__, source_bpp=source_bpp,
               source_model=getattr(getattr(reg, "q", None), "kind", None),
               spec_warmup=spec["warmup"])
    return {spec["variant"]: res}


if __name__ == "__main__":
    ts._worker_main(sys.argv[1:], {"reg": worker_reg})
