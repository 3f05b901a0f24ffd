"""kill -9, SIGTERM or a full disk at random moments, then resume: does the run directory stay
usable, and what does each cost?

    OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening/kill_resume.py --trials 20
    OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening/kill_resume.py --mode term --trials 20
    OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening/kill_resume.py --mode disk --trials 10

Each trial starts a tiny `train.py` run (40 steps, last.ckpt every 4 steps, metrics flushed
every step), kills its process group with SIGKILL at a random moment 0-8 s after its first
training step (every 3rd trial: the moment a checkpoint temp file appears after last.ckpt
exists, i.e. during the overwrite of a checkpoint), then runs the same
command again and checks: it resumes (from last.ckpt or the kept previous one), ends at step 40
with exit 0, leaves no temp file, no lock held and no best-v1.ckpt. Steps lost = the last step
the killed run logged minus the first step the resumed run logged (the step in progress at the
kill not counted; a run with no checkpoint yet loses every logged step + 1).

--mode term sends SIGTERM (a cluster's stop, preemption) instead, at the same moments: the run
should save last.ckpt at the step it stopped, print one line and exit 143; the table adds its
exit code, its last line and the seconds from the signal to the exit. --mode disk runs each trial
in a tmpfs of a random 7-12 MiB (`mount -t tmpfs`, as root; elsewhere an ENOSPC injected into
torch.save after a random 1-6 checkpoints): the run should stop with one line (the path, "no space
left on device", what was kept, exit 1); then the disk gets room (remount at 256 MiB) and the
same command resumes.
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


FULL_DISK = """
import errno, os, runpy, sys, torch
real, saves = torch.save, [0]
def save(obj, f, *a, **k):  # the disk fills up after SAVES_BEFORE_FULL checkpoints
    saves[0] += 1
    if saves[0] > int(os.environ["SAVES_BEFORE_FULL"]):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(obj, f, *a, **k)
torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def can_mount_tmpfs(base: Path) -> bool:
    """Whether `mount -t tmpfs` works here (root in a machine that allows it)."""
    d = base / "probe"
    d.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(d)], check=True)
    return ok


def disk_trial(i: int, rng: random.Random, base: Path, tmpfs: bool) -> dict:
    """A run that meets a full disk (a small tmpfs, else an injected ENOSPC), then resumes."""
    import torch

    mount = base / f"disk{i:02d}"
    mount.mkdir()
    size = rng.randint(7, 12)  # last.ckpt is ~3.6 MiB: full at the 2nd to 4th checkpoint write
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run_dir = mount / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    if tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mount)], check=True)
        first = cmd
    else:
        size = rng.randint(1, 6)  # checkpoints written before the disk is full
        (base / "full_disk.py").write_text(FULL_DISK)
        first = [sys.executable, str(base / "full_disk.py"), *cmd[1:]]
        env["SAVES_BEFORE_FULL"] = str(size)
    try:
        r1 = subprocess.run(first, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
        ckpt_dir = run_dir / "checkpoints"
        kept = -1
        if (ckpt_dir / "last.ckpt").is_file():
            kept = int(torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"])
        temp_left = [f.name for f in ckpt_dir.iterdir() if ".tmp-" in f.name] if ckpt_dir.is_dir() else []
        reached = max(logged_steps(run_dir) or [-1])
        line = (r1.stderr.strip().splitlines() or [""])[-1]
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
        final = int(torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]) \
            if (ckpt_dir / "last.ckpt").is_file() else -1
        resumed = "resuming from" in r.stderr + r.stdout
        start = _first_logged_of_last_version(run_dir) if resumed else 0
        names = sorted(f.name for f in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []
    finally:
        if tmpfs:
            subprocess.run(["umount", str(mount)], check=False)
    one_line = r1.returncode == 1 and "no space left on device" in line and "Traceback" not in r1.stderr
    return {"trial": i, "size": f"{size} MiB" if tmpfs else f"after {size} saves", "rc1": r1.returncode,
            "one_line": one_line, "kept_step": kept, "temp_left": len(temp_left), "reached": reached,
            "resumed": resumed, "lost": max(0, reached - start) if resumed else reached + 1,
            "rc": r.returncode, "final_step": final,
            "clean_dir": not any(".tmp-" in n or "-v1" in n for n in names), "line": line[:220],
            "last_err": (r.stderr.strip().splitlines() or [""])[-1][:200] if r.returncode else ""}


def _first_logged_of_last_version(run_dir: Path) -> int:
    v = sorted((run_dir / "csv").glob("version_*"), key=lambda q: int(q.name.split("_")[1]))[-1]
    with (v / "metrics.csv").open() as fh:
        steps = [int(float(row["step"])) for row in csv.DictReader(fh) if row.get("step")]
    return min(steps) if steps else 0


def trial(i: int, rng: random.Random, base: Path, sig: int = signal.SIGKILL) -> dict:
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
    sent = time.time()
    if not finished_before_kill:
        os.killpg(p.pid, sig)
    p.wait()
    to_exit = time.time() - sent
    killed_err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    killed_rc, killed_line = p.returncode, (killed_err.strip().splitlines() or [""])[-1]
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
            "killed_rc": killed_rc, "killed_line": killed_line[:220], "to_exit": to_exit,
            "temp_left_by_kill": len(temp_left), "reached": reached, "resumed": bool(resumed_from),
            "resumed_file": Path(resumed_from).name if resumed_from else "-",
            "resume_step": start_step, "lost": max(0, reached - start_step) if resumed_from else reached + 1,
            "rc": r.returncode, "final_step": final,
            "clean_dir": not any(".tmp-" in n or "-v1" in n for n in names),
            "last_err": (r.stderr.strip().splitlines() or [""])[-1][:200] if r.returncode else ""}


def main_disk(trials: int, rng: random.Random, base: Path) -> int:
    tmpfs = can_mount_tmpfs(base)
    how = ("a tmpfs of 7-12 MiB per trial" if tmpfs
           else "ENOSPC injected into torch.save (mount -t tmpfs not permitted here)")
    print(f"full disk: {how}\n")
    print("| trial | disk | exit | one line | last.ckpt kept at step | temp files left | last logged step | resumed "
          "| steps lost | exit | final step | dir clean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for i in range(trials):
        t = disk_trial(i, rng, base, tmpfs)
        rows.append(t)
        print(f"| {t['trial']} | {t['size']} | {t['rc1']} | {t['one_line']} | {t['kept_step']} | {t['temp_left']} "
              f"| {t['reached']} | {t['resumed']} | {t['lost']} | {t['rc']} | {t['final_step']} | {t['clean_dir']} |",
              flush=True)
        if not t["one_line"] or t["last_err"]:
            print(f"    {t['line'] if not t['one_line'] else t['last_err']}", flush=True)
    full = [t for t in rows if t["rc1"] != 0]
    ok = [t for t in full if t["one_line"] and t["rc"] == 0 and t["final_step"] == MAX_STEPS and t["clean_dir"]]
    print(f"\n{len(full)} of {len(rows)} runs met the full disk, {sum(t['one_line'] for t in full)} stopped with one "
          f"line (exit 1), {len(ok)} resumed and completed at step {MAX_STEPS} with a clean directory; steps lost: "
          f"max {max((t['lost'] for t in full), default=0)}, "
          f"mean {sum(t['lost'] for t in full) / max(1, len(full)):.1f}")
    if full:
        print(f"e.g.: {full[0]['line']}")
    return 0 if len(ok) == len(full) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["kill", "term", "disk"], default="kill",
                    help="kill -9 (default), SIGTERM, or a full disk")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    base = Path(tempfile.mkdtemp(prefix=f"codecx_{a.mode}_"))
    if a.mode == "disk":
        return main_disk(a.trials, rng, base)
    sig = signal.SIGTERM if a.mode == "term" else signal.SIGKILL
    rows = []
    term = sig == signal.SIGTERM
    extra = " exit of the stopped run | s from the signal to its exit |" if term else ""
    print("| trial | killed | during a checkpoint write | temp files left by the kill |" + extra
          + " last logged step | resumed | from | steps lost | exit | final step | dir clean |")
    print("|---|---|---|---|" + ("---|---|" if term else "") + "---|---|---|---|---|---|---|")
    for i in range(a.trials):
        t = trial(i, rng, base, sig)
        rows.append(t)
        cells = f" {t['killed_rc']} | {t['to_exit']:.1f} |" if term and t["killed"] else (" - | - |" if term else "")
        print(f"| {t['trial']} | {t['killed']} | {t['during_write']} | {t['temp_left_by_kill']} |{cells} "
              f"{t['reached']} "
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
    if sig == signal.SIGTERM and killed:
        clean = [t for t in killed
                 if t["killed_rc"] == 143 and t["killed_line"].startswith("codecx: stopped by SIGTERM")]
        # the signal met a run that had finished (its process exiting after the final evaluation):
        # Python's default action ends it (-15; the shell reports 143 as well), nothing is lost
        exiting = [t for t in killed if t["killed_rc"] == -signal.SIGTERM and t["reached"] >= MAX_STEPS]
        waits = sorted(t["to_exit"] for t in clean) or [0.0]
        print(f"SIGTERM: {len(clean)} of {len(killed)} exited 143 with one line ({len(exiting)} more met a run "
              f"already exiting after its last step: ended by the signal's default action); signal to exit: "
              f"median {waits[len(waits) // 2]:.1f} s, max {waits[-1]:.1f} s")
        for t in killed:
            if t not in clean and t not in exiting:
                print(f"    trial {t['trial']}: exit {t['killed_rc']}: {t['killed_line']}")
        print(f"e.g.: {clean[0]['killed_line'] if clean else killed[0]['killed_line']}")
        ok = [t for t in ok if t in clean or t in exiting]
    return 0 if len(ok) == len(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
