"""A trained checkpoint for the benchmarks that need one (real bpp, realistic scales)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from codecx.eval.checkpoint import checkpoint_step

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench"
TRAIN_DATA = ROOT.parent / "shared" / "data" / "train"  # conf/experiment/cpu_study.yaml's photos
STEPS, QUICK_STEPS = 300, 20


def trained_checkpoint(ckpt: Optional[str] = None, *, N: int = 64, M: int = 96,
                       steps: Optional[int] = None, quick: bool = False,
                       threads: Optional[int] = None) -> Path:
    """`ckpt` when given; else `runs/bench/<name>/checkpoints/last.ckpt` of `train.py
    experiment=cpu_study` (mbt_mean `N`, `M`, `steps` steps: 300, or 20 with `quick`),
    trained now (with `threads` threads) unless that run already reached `steps`."""
    if ckpt:
        return Path(ckpt)
    steps = int(steps or (QUICK_STEPS if quick else STEPS))
    name = f"cpu_study_mbt_mean_N{N}_M{M}_{steps}steps"
    run_dir = RUNS / name
    last = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint_step(last) >= steps:
        return last
    if not TRAIN_DATA.is_dir():
        raise FileNotFoundError(f"{TRAIN_DATA} not found: it holds experiment=cpu_study's training "
                                "photos; pass a train.py checkpoint instead")
    cmd = [sys.executable, "train.py", "experiment=cpu_study", f"model.N={N}", f"model.M={M}",
           f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir.relative_to(ROOT)}"]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "bench_train.log"
    print(f"training the benchmark model once: {' '.join(cmd[1:])} (log: {log.relative_to(ROOT)})",
          flush=True)
    with log.open("w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0 or checkpoint_step(last) < steps:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"train.py failed (exit {r.returncode}); end of {log}:\n{tail}")
    return last
