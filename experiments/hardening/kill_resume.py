"""kill -9 at random moments, then resume: does the run directory stay usable?

    OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening/kill_resume.py --trials 20

Each trial starts a tiny `train.py` run (40 steps, last.ckpt every 4 steps, metrics flushed
every step), kills its process group with SIGKILL at a random moment 0-8 s after its first
training step (every 3rd trial: the moment a checkpoint temp file appears after last.ckpt
exists, i.e. during the overwrite of a checkpoint), then runs the same
command again and checks: it resumes (from last.ckpt or the kept previous one), ends at step 40
with exit 0, leaves no temp file, no lock held and no best-v1.ckpt. Steps lost = the last step
the killed run logged minus the first step the resumed run logged (the step in progress at the
kill not counted; a run with no checkpoint yet loses every logged step + 1).
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 40
ARGS = ["model.N=8", "model.M=12", "data.crop_size=64", "data.batch_size=2",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.max_val_images=1",
        "data.val_crop_size=64", "trainer.max_steps=40", "checkpoint.every_n_steps=4",
        "eval.every_n_steps=0", "+logger.flush_logs_every_n_steps=1"]


def logged_steps(run_dir: Path) -> list:
    """Max logged step of each csv/version_N (in version order)."""
    out = []
    for v in sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        steps = []
        f = v / "metrics.csv"
        if f.is_file():
            with f.open() as fh:
                for row in csv.DictReader(fh):
                    try:
                        steps.append(int(float(row["step"])))
                    except (KeyError, ValueError, TypeError):
                        pass
        out.append(max(steps) if steps else -1)
    return out


def trial(i: int, rng: random.Random, base: Path) -> dict:
    import torch

    run_dir = base / f"trial{i:02d}"
    cmd = [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    during_write = i % 3 == 2
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env, start_new_session=True)
    ckpt_dir = run_dir / "checkpoints"
    # the kill comes once training runs (start-up takes long on a loaded machine): after a random
    # 0-10 s, or (during_write) at the first checkpoint write after last.ckpt exists
    deadline, delay, in_write = time.time() + 900, None, False
    while time.time() < deadline and p.poll() is None:
        if during_write:
            if (ckpt_dir / "last.ckpt").is_file() and any(".tmp-" in f.name for f in ckpt_dir.iterdir()):
                in_write = True
                break
            time.sleep(0.002)
            continue
        if delay is None and max(logged_steps(run_dir) or [-1]) >= 0:
            delay = time.time() + rng.uniform(0, 8)
        if delay is not None and time.time() >= delay:
            break
        time.sleep(0.05)
    finished_before_kill = p.poll() is not None
    if not finished_before_kill:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    temp_left = [f.name for f in ckpt_dir.iterdir() if ".tmp-" in f.name] if ckpt_dir.is_dir() else []
    reached = max(logged_steps(run_dir) or [-1])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    names = sorted(f.name for f in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []
    final = -1
    if (ckpt_dir / "last.ckpt").is_file():
        final = int(torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"])
    resumed_from = None
    for line in r.stderr.splitlines() + r.stdout.splitlines():
        if "resuming from" in line:
            resumed_from = line.rsplit("resuming from", 1)[1].strip()
    start_step = 0
    if resumed_from:
        versions = logged_steps(run_dir)
        # the resumed run's first logged step - 1 is the step it resumed from
        v = sorted((run_dir / "csv").glob("version_*"), key=lambda q: int(q.name.split("_")[1]))[-1]
        with (v / "metrics.csv").open() as fh:
            steps = [int(float(row["step"])) for row in csv.DictReader(fh) if row.get("step")]
        start_step = min(steps) if steps else final
        del versions
    return {"trial": i, "killed": not finished_before_kill, "during_write": in_write,
            "temp_left_by_kill": len(temp_left), "reached": reached, "resumed": bool(resumed_from),
            "resumed_file": Path(resumed_from).name if resumed_from else "-",
            "resume_step": start_step, "lost": max(0, reached - start_step) if resumed_from else reached + 1,
            "rc": r.returncode, "final_step": final,
            "clean_dir": not any(".tmp-" in n or "-v1" in n for n in names),
            "last_err": (r.stderr.strip().splitlines() or [""])[-1][:200] if r.returncode else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    base = Path(tempfile.mkdtemp(prefix="codecx_kill_"))
    rows = []
    print("| trial | killed | during a checkpoint write | temp files left by the kill | last logged step | resumed | from | steps lost | exit | final step | dir clean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i in range(a.trials):
        t = trial(i, rng, base)
        rows.append(t)
        print(f"| {t['trial']} | {t['killed']} | {t['during_write']} | {t['temp_left_by_kill']} | {t['reached']} "
              f"| {t['resumed']} | {t['resumed_file']} | {t['lost']} | {t['rc']} | {t['final_step']} "
              f"| {t['clean_dir']} |", flush=True)
        if t["last_err"]:
            print(f"    {t['last_err']}", flush=True)
    killed = [t for t in rows if t["killed"]]
    ok = [t for t in killed if t["rc"] == 0 and t["final_step"] == MAX_STEPS and t["clean_dir"]]
    print(f"\n{len(killed)} killed ({sum(t['during_write'] for t in killed)} during a checkpoint write), "
          f"{sum(t['resumed'] for t in killed)} resumed, {len(ok)} completed at step {MAX_STEPS} with a clean "
          f"directory; steps lost: max {max((t['lost'] for t in killed), default=0)}, "
          f"mean {sum(t['lost'] for t in killed) / max(1, len(killed)):.1f}")
    return 0 if len(ok) == len(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
