"""One-command GPU check (issue 33 item 6): `make gpu-check` or `python scripts/gpu_check.py`.

Each step is short (the whole check: a few minutes, under 10 on one GPU) and runs the real entry
points on the first CUDA device:

1. bf16 mixed precision: `python train.py trainer=gpu trainer.precision=bf16-mixed` (mbt_mean
   N=64 M=96, a few steps on the sample photos, eager), then its final real-bitstream evaluation.
2. torch.compile: the same with `trainer.compile=true trainer.channels_last=true` (the compile
   warm-up line must appear).
3. One-GPU DDP: `trainer=ddp trainer.accelerator=gpu trainer.devices=1` (NCCL, one process).
4. The eval coder on GPU tensors: the checkpoint of step 1 loaded for coding, then a sample photo
   compressed with the codec and image on the GPU; the GPU's streams are decoded on the CPU and
   compared with the CPU's own streams (identical bytes, or the PSNR of both decodes).
5. `python -m benchmarks --only train_fast,train_step --quick --device cuda` (the bench's GPU path).

Exit status: 0 when every step passed, 1 when one failed (its output tail is printed), 77 (the
usual "skipped" status of test drivers) when torch sees no CUDA device: nothing is checked then.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = 77
TRAIN = ["model=mbt_mean_small", "data.crop_size=128", "data.batch_size=8", "eval.every_n_steps=0",
         "eval.final_max_images=1", "data.max_val_images=1", "checkpoint.every_n_steps=0",
         "trainer.enable_progress_bar=false", "data.num_workers=2"]


def no_cuda_message() -> Optional[str]:
    """Why the check cannot run here (None when a CUDA device is visible)."""
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "no CUDA (a CPU-only build)"
    return (f"gpu-check: skipped: torch sees no CUDA device (torch {torch.__version__}, built for {built}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); nothing was checked. "
            "Run it on a machine with an NVIDIA GPU (docs/manual/benchmarks.md, 'GPU check').")


def _run(cmd: List[str], timeout: int, expect: Tuple[str, ...] = ()) -> Tuple[bool, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return False, f"timed out after {timeout} s\n{out[-3000:]}"
    out = r.stdout + r.stderr
    missing = [s for s in expect if s not in out]
    if r.returncode != 0 or missing:
        why = f"exit {r.returncode}" + (f"; missing {missing}" if missing else "")
        return False, f"{why}\n{out[-4000:]}"
    return True, "\n".join(ln for ln in out.splitlines() if ln.startswith(("codecx:", "  validation",
                                                                           "train_", "GPU available")))


def train_step(name: str, out: Path, extra: List[str], steps: int, timeout: int,
               expect: Tuple[str, ...] = ()) -> Callable[[], Tuple[bool, str]]:
    cmd = [sys.executable, str(ROOT / "train.py"), *TRAIN, f"trainer.max_steps={steps}",
           f"hydra.run.dir={out / name}", *extra]
    return lambda: _run(cmd, timeout, ("GPU available: True (cuda), used: True", "PSNR", *expect))


def coder_on_gpu(ckpt: Path) -> Tuple[bool, str]:
    """The codec of `ckpt` codes a sample photo on the GPU; the CPU decodes those streams."""
    import torch

    from codecx.cli import read_image
    from codecx.data.datamodule import sample_image_paths
    from codecx.eval.load import load_codec
    from codecx.metrics.rd import psnr_uint8

    cpu, _ = load_codec(ckpt)  # CPU, eval mode, CDF tables built
    x = read_image(sample_image_paths()[1][0])[..., :256, :256]
    with torch.no_grad():
        ref = cpu.compress(x)
        gpu = load_codec(ckpt)[0].cuda()
        out = gpu.compress(x.cuda())
        same = out["strings"] == ref["strings"]
        x_gpu = cpu.decompress(out["strings"], out["shape"], out["y_shape"], out["z_shape"], out["options"])
        x_cpu = cpu.decompress(ref["strings"], ref["shape"], ref["y_shape"], ref["z_shape"], ref["options"])
        x_dev = gpu.decompress(out["strings"], out["shape"], out["y_shape"], out["z_shape"], out["options"])
    p_gpu, p_cpu = psnr_uint8(x, x_gpu), psnr_uint8(x, x_cpu)
    line = (f"GPU streams {'identical to' if same else 'differ from'} the CPU's; CPU decode of the GPU streams "
            f"{p_gpu:.2f} dB, of the CPU streams {p_cpu:.2f} dB; GPU decode of its own streams "
            f"{psnr_uint8(x, x_dev.cpu()):.2f} dB")
    return (same or abs(p_gpu - p_cpu) < 0.5), line


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="run folders here (default: a temporary folder, removed)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per training check")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per step before it fails")
    a = ap.parse_args(argv)
    why = no_cuda_message()
    if why:
        print(why, file=sys.stderr)
        return SKIPPED
    import torch

    print(f"gpu-check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'})", flush=True)
    with tempfile.TemporaryDirectory(prefix="codecx-gpu-check-") as tmp:
        out = Path(a.out or tmp)
        gpu = ["trainer=gpu", "trainer.precision=bf16-mixed"]
        steps = [
            ("bf16 mixed precision, eager", train_step("bf16", out, [*gpu, "trainer.compile=false"], a.steps,
                                                        a.timeout)),
            ("torch.compile + channels-last, bf16", train_step(
                "compile", out, [*gpu, "trainer.compile=true", "trainer.channels_last=true"], a.steps, a.timeout,
                ("torch.compile warm-up: first step",))),
            ("one-GPU DDP (NCCL)", train_step("ddp", out, ["trainer=ddp", "trainer.accelerator=gpu",
                                                           "trainer.devices=1", "trainer.precision=bf16-mixed"],
                                              a.steps, a.timeout)),
            ("eval coder on GPU tensors", lambda: coder_on_gpu(out / "bf16" / "checkpoints" / "last.ckpt")),
            ("make bench --device cuda (quick)", lambda: _run(
                [sys.executable, "-m", "benchmarks", "--only", "train_fast,train_step", "--quick", "--device",
                 "cuda"], 2 * a.timeout, ("Summary",))),
        ]
        results = []
        t_all = time.perf_counter()
        for name, fn in steps:
            print(f"\n--- {name}", flush=True)
            t0 = time.perf_counter()
            try:
                ok, text = fn()
            except Exception:  # noqa: BLE001 - report it, run the other checks
                ok, text = False, traceback.format_exc()[-4000:]
            results.append((name, ok, time.perf_counter() - t0))
            print(text, flush=True)
        print(f"\ngpu-check summary ({time.perf_counter() - t_all:.0f} s):")
        for name, ok, dt in results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name} ({dt:.0f} s)")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
