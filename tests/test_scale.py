"""Slow checks: Hydra multirun, DDP on 2 CPU processes (gloo), resume after a kill."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, logged, run_train

pytestmark = pytest.mark.slow


def _losses(run_dir: Path):
    return logged(run_dir)


def test_issue_command_trains(tmp_path):
    """The issue's command, as written (default model size), in a fresh run folder (the default
    runs/train/<overrides> of a checkout may hold this command's finished run already)."""
    r = run_train(["model=mbt_mean", "reg=none", "lmbda=0.0067", "trainer.max_steps=20",
                   "trainer.enable_progress_bar=false", "data.max_val_images=1",
                   f"hydra.run.dir={tmp_path / 'run'}"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained mbt_mean for 20 steps" in r.stdout


def test_multirun_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_train(["-m", "model=mbt_mean", "lmbda=0.0018,0.0067", "trainer.max_steps=5", *TINY,
                   f"hydra.sweep.dir={sweep}"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.parent.parent for p in sweep.glob("*/checkpoints/last.ckpt"))
    assert len(runs) == 2
    lmbdas = sorted(torch.load(p / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=False)["codecx_config"]["lmbda"] for p in runs)
    assert lmbdas == [0.0018, 0.0067]


@pytest.mark.parametrize("speed", [["trainer.channels_last=false", "trainer.compile=false"],
                                   ["trainer.channels_last=true", "trainer.compile=true"]],
                         ids=["eager", "compiled"])
def test_ddp_matches_single_process(tmp_path, speed):
    """2 gloo processes with batch 2 each == 1 process with batch 4, step by step; also with the
    transforms channels-last and compiled (issue 33 item 3)."""
    common = [*TINY, "quantizer=ste", "data.augment=false", "data.shuffle=false",
              "data.repeat=2", "trainer.max_steps=3", "schedule.scheduler=constant", *speed]
    single = run_train([*common, "data.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_train([*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.max_steps=3", "data.batch_size=2", f"hydra.run.dir={tmp_path / 'two'}"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [0, 1, 2]
    for (_, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-4)


def test_kill_then_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=150", "checkpoint.every_n_steps=5", f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not last.is_file():  # no time limit: a hang is the test's timeout
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it exited by itself: the asserts below say why that is wrong
        pass
    proc.wait()
    assert last.is_file(), f"no checkpoint was written before the kill (exit status {proc.returncode})"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < 150
    r = run_train(args)  # the same command
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout + r.stderr
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 150
    versions = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    resumed = [int(r["step"]) for r in csv.DictReader(open(versions[-1])) if r.get("train/loss")]
    # the resumed run starts right after the checkpoint (steps after it were lost with the kill)
    assert resumed[0] == killed_at and resumed[-1] == 149


def test_main_job(tmp_path):
    """`python train.py` with no arguments (the README's first command; only the run dir moved):
    the main job's recipe on the embedded sample photos, a clean console, then the final
    real-bitstream report next to JPEG and WebP at the same bpp."""
    r = run_train([f"hydra.run.dir={tmp_path}"], timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "codecx: trained mbt_mean for 700 steps (lmbda=0.0018)" in out
    assert "mbt_mean (N=64, M=96" in out and "train: 700/700 steps" in out
    assert f"checkpoint: {tmp_path}/checkpoints/last.ckpt" in out
    assert "validation (2 images, real bitstreams): bpp" in out and "PSNR" in out
    assert "JPEG at the same bpp:" in out and "WebP at the same bpp:" in out
    for noise in ("💡", "LeafSpec", "def training_step", "v_num", "Epoch "):
        assert noise not in out + r.stderr, noise
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == 700
