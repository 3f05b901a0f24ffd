"""Training step: codecx (LitCodec through Lightning's Trainer) vs a plain PyTorch loop on CompressAI.

What is compared (issue 2, item 8): mbt_mean (N=128, M=192) at batch 8 of 256-px crops.

- **codecx**: the real `LitCodec.training_step` run by `pl.Trainer.fit` (manual optimisation,
  codec phase then the entropy-bottleneck aux phase), built from the same Hydra config as
  `python train.py` (`model=mbt_mean quantizer=noise reg=none schedule=compressai`), with
  `logger=False`, no checkpointing, no progress bar, no model summary, `limit_val_batches=0`.
  A Callback takes `time.perf_counter()` in `on_train_batch_start` / `on_train_batch_end`.
- **plain**: CompressAI's `MeanScaleHyperprior(N, M)` with the *same initial weights*, in a
  bare loop: forward, `bpp + lmbda * 255^2 * MSE`, backward, `clip_grad_norm_(1.0)`, Adam
  step, `aux_loss()` backward + aux Adam step; timed the same way per step.

Both variants see the same preloaded batches (in memory, on the device: data loading is not
measured), the same torch thread count and the same noise (the RNG is seeded per step, outside
the timed region), so their losses agree step by step (reported: a check that the work is the
same). Time ratio = median codecx step / median plain step.

Modes (`--ts-mode`):
- `paired` (default): timing in one process that runs Lightning's fit; step i of the plain loop
  runs on the same batch right before codecx's step i (even i) or right after it (odd i),
  outside codecx's timed region. Adjacent steps see the same load, which matters on a shared
  machine. Memory comes from one short run of each variant alone in its own process.
- `separate`: each variant in its own processes, in alternating rounds A,B,B,A,...; timing and
  memory from the same runs. Noisier; needed for `--ts-profile` (one cProfile per process).

Also reported: Lightning's work between batches (previous step's end -> next start; the
iteration ratio adds it), process CPU time per step (less sensitive to being descheduled) and
minor page faults per step.

Memory. CUDA: `torch.cuda.max_memory_allocated()` over the steps (weights, batches,
activations, gradients, optimizer states). CPU: there is no allocator statistic for CPU
tensors, so the honest figure is the process's resident memory: the peak RSS reached during
the steps (Linux `VmHWM`, reset through `/proc/self/clear_refs` just before the first step;
`ru_maxrss` if that is not allowed) minus the RSS at that point (after model, optimizers and
batches exist). It counts activations, gradients, Adam states (created at step 1) and what
glibc's allocator keeps resident, and excludes the interpreter and imported libraries (which
differ: Lightning is not imported by the plain loop).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks import Row

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRAIN = ROOT.parent / "shared" / "data" / "train"
DEFAULTS = {"steps": 5, "warmup": 3, "rounds": 3}   # 15 measured steps per variant
QUICK = {"steps": 2, "warmup": 1, "rounds": 1}
TIME_TARGET, MEMORY_TARGET = 1.03, 1.10
VARIANTS = ("plain", "codecx")
# the schedule=compressai values, passed explicitly to both variants
LMBDA, LR, AUX_LR, CLIP = 0.0067, 1e-4, 1e-3, 1.0


def add_arguments(group) -> None:
    group.add_argument("--ts-batch-size", type=int, default=8, help="train_step: images per batch")
    group.add_argument("--ts-crop", type=int, default=256, help="train_step: crop size (px)")
    group.add_argument("--ts-N", type=int, default=128, help="train_step: mbt_mean N")
    group.add_argument("--ts-M", type=int, default=192, help="train_step: mbt_mean M")
    group.add_argument("--ts-data", default=None,
                       help="train_step: image folder for the crops (default: ../shared/data/train "
                            "if present, else the embedded sample photos)")
    group.add_argument("--ts-mode", choices=("paired", "separate"), default="paired",
                       help="train_step: paired = both variants in one process, alternating step "
                            "by step (robust to other load; memory then from one short run of each "
                            "variant alone); separate = each variant in its own processes, in "
                            "alternating rounds, timing and memory from the same runs")
    group.add_argument("--ts-raw", metavar="PATH", default=None,
                       help="train_step: write every worker's per-step measurements as JSON")
    group.add_argument("--ts-profile", metavar="DIR", default=None,
                       help="train_step: cProfile the measured steps of each worker into DIR "
                            "(timings then include the profiler's overhead)")


# ---------------------------------------------------------------------------- parent side
def step_spec(args, N: int, M: int, batch: int, crop: int, defaults: dict = DEFAULTS,
              quick: dict = QUICK) -> tuple:
    """(spec, rounds): what a training-step worker needs (model size, batches, device, threads,
    steps, the schedule=compressai values), from the shared benchmark options."""
    import torch

    from benchmarks import torch_device

    pick = lambda k: getattr(args, k, None) or (quick if args.quick else defaults)[k]  # noqa: E731
    device = torch_device(args)
    spec = {"N": N, "M": M, "batch": batch, "crop": crop, "device": device,
            "threads": args.threads or torch.get_num_threads(), "steps": pick("steps"),
            "warmup": pick("warmup"), "seed": args.seed, "lmbda": LMBDA, "lr": LR, "aux_lr": AUX_LR,
            "clip": CLIP, "profile_dir": None}
    return spec, pick("rounds")


def run(args) -> List[Row]:
    spec, rounds = step_spec(args, args.ts_N, args.ts_M, args.ts_batch_size, args.ts_crop)
    steps, warmup, device, threads = spec["steps"], spec["warmup"], spec["device"], spec["threads"]
    spec["profile_dir"] = args.ts_profile
    mode = args.ts_mode
    if args.ts_profile and mode == "paired":
        mode = "separate"  # one cProfile per process
        print("--ts-profile: using --ts-mode separate (one profile per variant and round)")
    if mode == "paired":
        spec["steps"] = steps * rounds  # one process; the alternation is per step
        plan = f"{warmup} warm-up + {spec['steps']} measured steps per variant, alternating step by step"
    else:
        plan = f"{rounds} round(s) x ({warmup} warm-up + {steps} measured) steps per variant"
    print(f"mbt_mean N={spec['N']} M={spec['M']}, batch {spec['batch']} x {spec['crop']} px, "
          f"{device}, {threads} threads; --ts-mode {mode}: {plan}", flush=True)

    timing: Dict[str, List[dict]] = {v: [] for v in VARIANTS}
    memory: Dict[str, List[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="codecx-bench-") as tmp:
        tmp = Path(tmp)
        spec.update(prepare(tmp, spec, args.ts_data))
        if mode == "paired":
            res = spawn("paired", spec, tmp, 0)
            for v in VARIANTS:
                timing[v].append(res[v])
                _print_run("paired", v, res[v])
            # memory: each variant alone in a fresh process (RSS is per process)
            mem_spec = dict(spec, warmup=1, steps=1 if args.quick else 2, profile_dir=None)
            for v in VARIANTS:
                memory[v].append(spawn(v, mem_spec, tmp, 0)[v])
                _print_run("memory", v, memory[v][-1])
        else:
            for r in range(rounds):
                for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                    res = spawn(v, spec, tmp, r)[v]
                    timing[v].append(res)
                    memory[v].append(res)
                    _print_run(f"round {r + 1}", v, res)
    if args.ts_raw:
        Path(args.ts_raw).write_text(json.dumps({"spec": spec, "timing": timing, "memory": memory}))
    return summarize(timing, memory, spec, mode)


def _print_run(what: str, variant: str, res: dict) -> None:
    t = res["step_s"]
    print(f"  {what} {variant:6s}: median {1e3 * statistics.median(t):8.1f} ms/step "
          f"(min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f}, {len(t)} steps), "
          f"peak +{res['peak_bytes'] / 2**20:.0f} MiB [{res['memory_kind']}], {res['wall_s']:.0f} s",
          flush=True)


def _median(xs, empty: float = 0.0) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else empty


def summarize(timing: Dict[str, List[dict]], memory: Dict[str, List[dict]], spec: dict,
              mode: str) -> List[Row]:
    pool = lambda key, v: [t for res in timing[v] for t in res[key]]  # noqa: E731
    med = {v: _median(pool("step_s", v)) for v in VARIANTS}
    gap = {v: _median(pool("gap_s", v)) for v in VARIANTS}
    cpu = {v: _median(pool("cpu_s", v)) for v in VARIANTS}
    peak = {v: _median(res["peak_bytes"] for res in memory[v]) for v in VARIANTS}
    ratio = med["codecx"] / med["plain"]
    iter_ratio = (med["codecx"] + gap["codecx"]) / (med["plain"] + gap["plain"])
    cpu_ratio = cpu["codecx"] / cpu["plain"]
    mem_ratio = peak["codecx"] / peak["plain"]
    pairs = [c / p for rp, rc in zip(timing["plain"], timing["codecx"])
             for p, c in zip(rp["step_s"], rc["step_s"])]
    # same work? losses of the same step (same weights, batches and noise)
    rel = [abs(c - p) / abs(p) for rp, rc in zip(timing["plain"], timing["codecx"])
           for p, c in zip(rp["losses"], rc["losses"])]
    threads = {v: sorted({res["threads"] for res in timing[v] + memory[v]}) for v in VARIANTS}
    kind = memory["plain"][0]["memory_kind"]
    n = len(pool("step_s", "plain"))

    print(f"\n  step time (perf_counter at on_train_batch_start -> on_train_batch_end), median of {n} steps:")
    print(f"    plain  {1e3 * med['plain']:9.1f} ms/step")
    print(f"    codecx {1e3 * med['codecx']:9.1f} ms/step   ratio {ratio:.3f} (target <= {TIME_TARGET})")
    print(f"    step-by-step ratios: median {_median(pairs):.3f}, "
          f"quartiles {_quartiles(pairs)}")
    print(f"  Lightning's work between batches (end -> next start): {1e3 * gap['codecx']:.2f} ms "
          f"(plain loop: {1e3 * gap['plain']:.2f} ms); iteration ratio {iter_ratio:.3f}")
    print(f"  process CPU time per step (all threads): plain {1e3 * cpu['plain']:.1f} ms, "
          f"codecx {1e3 * cpu['codecx']:.1f} ms, ratio {cpu_ratio:.3f}")
    faults = {v: _median(pool("faults", v)) for v in VARIANTS}
    print(f"  minor page faults per step: plain {faults['plain']:.0f}, codecx {faults['codecx']:.0f}")
    what = "max_memory_allocated" if kind == "cuda" else "peak RSS growth during the steps"
    print(f"  memory ({what}): plain {peak['plain'] / 2**20:.0f} MiB, codecx "
          f"{peak['codecx'] / 2**20:.0f} MiB, ratio {mem_ratio:.3f} (target <= {MEMORY_TARGET})")
    print(f"  same work: losses differ by at most {max(rel):.1e} (relative) over {len(rel)} steps; "
          f"threads plain {threads['plain']} codecx {threads['codecx']}")
    if threads["plain"] != threads["codecx"]:
        print("  WARNING: the variants ran with different thread counts")
    if spec.get("profile_dir"):
        print(f"  profiles (timings include cProfile overhead): {spec['profile_dir']}/*.prof")

    return [
        Row("step time ratio codecx/plain", ratio, TIME_TARGET, "ratio"),
        Row("iteration time ratio codecx/plain", iter_ratio, TIME_TARGET, "ratio",
            note="step + Lightning's between-batch work"),
        Row("CPU time ratio codecx/plain", cpu_ratio, None, "ratio", note="process CPU time per step"),
        Row("peak memory ratio codecx/plain", mem_ratio, MEMORY_TARGET, "ratio", note=what),
        Row("codecx step", 1e3 * med["codecx"], None, "ms"),
        Row("plain step", 1e3 * med["plain"], None, "ms"),
        Row("codecx between batches", 1e3 * _median(pool("gap_s", "codecx"), math.nan), None, "ms"),
        Row("codecx peak memory", peak["codecx"] / 2**20, None, "MiB"),
        Row("plain peak memory", peak["plain"] / 2**20, None, "MiB"),
        Row("loss max rel. diff (same work)", max(rel), 1e-3, "rel"),
    ]


def _quartiles(xs) -> str:
    if len(xs) < 2:
        return "n/a"
    q = statistics.quantiles(xs, n=4)
    return f"{q[0]:.3f} / {q[2]:.3f}"


def prepare(tmp: Path, spec: dict, data: Optional[str]) -> dict:
    """Write the preloaded batches (uint8) and the shared initial weights into `tmp`."""
    import torch

    from codecx.models import build_backbone

    n = spec["warmup"] + spec["steps"]
    paths, source = _image_paths(data, spec["crop"])
    batches = random_crops(paths, n * spec["batch"], spec["crop"], spec["seed"])
    torch.save(batches.view(n, spec["batch"], 3, spec["crop"], spec["crop"]), tmp / "batches.pt")
    torch.manual_seed(spec["seed"])
    backbone = build_backbone("mbt_mean", N=spec["N"], M=spec["M"])
    torch.save(backbone.state_dict(), tmp / "init.pt")
    print(f"  data: {n} batches of random crops from {source}", flush=True)
    return {"batches_path": str(tmp / "batches.pt"), "init_path": str(tmp / "init.pt"),
            "data": source}


def _image_paths(data: Optional[str], crop: int):
    from PIL import Image

    from codecx.data.datamodule import list_images, sample_image_paths

    if data:
        paths, source = list_images(data, "--ts-data"), data
    elif SHARED_TRAIN.is_dir() and list_images(SHARED_TRAIN):
        paths, source = list_images(SHARED_TRAIN), str(SHARED_TRAIN.resolve())
    else:
        paths, source = sample_image_paths()[0], "the embedded sample photos (scikit-image)"
    ok = []
    for p in paths:
        try:
            with Image.open(p) as im:
                if min(im.size) >= crop:
                    ok.append(p)
        except Exception:  # noqa: BLE001 - unreadable: skip
            pass
    if not ok:
        raise ValueError(f"{source}: no readable images of at least {crop}x{crop} px")
    return ok, f"{source} ({len(ok)} images)"


def random_crops(paths, count: int, crop: int, seed: int):
    """`count` random crops (with random horizontal flips) as a uint8 (count, 3, crop, crop)."""
    import random

    import numpy as np
    import torch
    from PIL import Image

    rng = random.Random(seed)
    out = torch.empty((count, 3, crop, crop), dtype=torch.uint8)
    for i in range(count):
        with Image.open(rng.choice(paths)) as im:
            w, h = im.size
            top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
            a = np.asarray(im.convert("RGB").crop((left, top, left + crop, top + crop)))
        x = torch.from_numpy(a.copy()).permute(2, 0, 1)
        out[i] = x.flip(-1) if rng.random() < 0.5 else x
    return out


def spawn(worker: str, spec: dict, tmp: Path, round_idx: int,
          module: str = "benchmarks.bench_train_step") -> Dict[str, dict]:
    """Run `worker` of `module` (here: plain, codecx or paired; see `_worker_main`) in a fresh
    interpreter; {variant: measurements}."""
    spec = dict(spec, round=round_idx)
    tag = f"{spec.get('variant', worker)}-{round_idx}-{spec['steps']}"
    spec_path, out_path = tmp / f"spec-{tag}.json", tmp / f"out-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, worker, str(spec_path), str(out_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        name = module.rsplit(".", 1)[-1][len("bench_"):]
        raise RuntimeError(f"{name} worker '{worker}' failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    res = json.loads(out_path.read_text())
    for r in res.values():
        r["wall_s"] = time.perf_counter() - t0
    return res


def alternating_rounds(worker: str, spec: dict, tmp: Path, rounds: int, variants, overrides: dict,
                       module: str) -> Dict[str, List[dict]]:
    """Each variant's measurements over `rounds`, each run in its own process with its Hydra
    `overrides`, the order of the variants reversed every other round (drift cancels)."""
    timing: Dict[str, List[dict]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            res = spawn(worker, dict(spec, variant=v, overrides=overrides[v]), tmp, r, module=module)[v]
            timing[v].append(res)
            _print_run(f"round {r + 1}", v, res)
    return timing


# ---------------------------------------------------------------------------- worker side
class Meter:
    """Per-step timestamps, CPU times, losses and the memory peak of one variant."""

    def __init__(self, spec: dict, variant: str):
        import torch

        self.spec, self.variant, self.torch = spec, variant, torch
        self.cuda = spec["device"] == "cuda"
        self.starts: List[float] = []
        self.ends: List[float] = []
        self.cpu: List[float] = []
        self.faults: List[int] = []
        self.gaps: List[float] = []  # previous step's end -> this step's start
        self.losses: List[float] = []
        self.base = 0
        self.threads = torch.get_num_threads()
        self.kind = "cuda" if self.cuda else "rss_hwm"
        self.profiler = None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def baseline(self) -> None:
        """Called once the model, optimizers and batches exist, before step 1."""
        import gc

        gc.collect()
        self.threads = self.torch.get_num_threads()
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = 0  # max_memory_allocated: everything the steps hold at their peak
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            self.kind = "ru_maxrss"
        self.base = _status_kib("VmRSS") * 1024

    def start(self, i: int, gap_ok: bool = True) -> None:
        """Untimed: seed the step's noise (same stream in both variants); then the clock."""
        if gap_ok and i > self.spec["warmup"] and self.ends:
            self.sync()
            self.gaps.append(time.perf_counter() - self.ends[-1])
        self.torch.manual_seed(self.spec["seed"] + i)
        if i == self.spec["warmup"] and self.spec.get("profile_dir"):
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()
        self.sync()
        self.faults.append(-_minor_faults())
        self.cpu.append(-time.process_time())
        self.starts.append(time.perf_counter())

    def end(self, loss) -> None:
        self.sync()
        self.ends.append(time.perf_counter())
        self.cpu[-1] += time.process_time()
        self.faults[-1] += _minor_faults()
        if self.profiler is not None and len(self.ends) == self.spec["warmup"] + self.spec["steps"]:
            self.profiler.disable()
        self.losses.append(float(loss))

    def peak(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        if self.kind == "rss_hwm":
            return _status_kib("VmHWM") * 1024 - self.base
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base

    def result(self) -> dict:
        if self.profiler is not None:
            self.profiler.disable()
            d = Path(self.spec["profile_dir"])
            d.mkdir(parents=True, exist_ok=True)
            self.profiler.dump_stats(str(d / f"{self.variant}-r{self.spec['round']}.prof"))
        w = self.spec["warmup"]
        return {"variant": self.variant, "threads": self.threads, "memory_kind": self.kind,
                "step_s": [e - s for s, e in zip(self.starts[w:], self.ends[w:])],
                "cpu_s": self.cpu[w:], "faults": self.faults[w:], "gap_s": self.gaps, "losses": self.losses,
                "first_s": self.ends[0] - self.starts[0] if self.ends else math.nan,
                "peak_bytes": self.peak(), "base_bytes": self.base}


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _load_batches(spec: dict):
    import torch

    u8 = torch.load(spec["batches_path"])[: spec["warmup"] + spec["steps"]]
    dev = torch.device(spec["device"])
    return [b.to(dev).float().div_(255.0).contiguous() for b in u8]


class PlainLoop:
    """The baseline: CompressAI's MeanScaleHyperprior trained by a bare PyTorch step."""

    def __init__(self, spec: dict):
        import torch
        from compressai.models import MeanScaleHyperprior

        self.torch = torch
        self.net = MeanScaleHyperprior(spec["N"], spec["M"])
        self.net.load_state_dict(torch.load(spec["init_path"]))
        self.net.to(torch.device(spec["device"])).train()
        named = list(self.net.named_parameters())
        self.params = [p for n, p in named if not n.endswith(".quantiles")]
        self.aux_params = [p for n, p in named if n.endswith(".quantiles")]
        self.opt = torch.optim.Adam(self.params, lr=spec["lr"])
        self.aux_opt = torch.optim.Adam(self.aux_params, lr=spec["aux_lr"])
        self.lmbda, self.clip = spec["lmbda"], spec["clip"]

    def step(self, x):
        torch = self.torch
        self.opt.zero_grad()
        self.aux_opt.zero_grad()
        out = self.net(x)
        n, _, h, w = x.shape
        bpp = sum(torch.log(lik).sum() for lik in out["likelihoods"].values()) / (-math.log(2) * n * h * w)
        mse = torch.mean((out["x_hat"] - x) ** 2)
        loss = bpp + self.lmbda * 255**2 * mse
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        aux_loss = self.net.aux_loss()
        aux_loss.backward()
        self.aux_opt.step()
        return loss.detach()


def worker_plain(spec: dict) -> Dict[str, dict]:
    import torch

    torch.set_num_threads(spec["threads"])
    loop = PlainLoop(spec)
    batches = _load_batches(spec)
    meter = Meter(spec, "plain")
    meter.baseline()
    for i, x in enumerate(batches):
        meter.start(i)
        loss = loop.step(x)
        meter.end(loss)
    return {"plain": meter.result()}


def _fit_codecx(spec: dict, callback_factory):
    """The real LitCodec (config of `python train.py`) under pl.Trainer.fit, with a callback.

    `spec["overrides"]` (optional) adds Hydra overrides, replacing the defaults of the same key
    (e.g. `["reg=cse", "alpha=1"]`). Returns (trainer, module).
    """
    import logging
    import warnings

    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    from codecx.train import CONF_DIR, build_module

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    overrides = ["model=mbt_mean", f"model.N={spec['N']}", f"model.M={spec['M']}", "quantizer=noise",
                 "reg=none", "schedule=compressai", f"schedule.lr={spec['lr']}",
                 f"schedule.aux_lr={spec['aux_lr']}", f"schedule.clip_max_norm={spec['clip']}",
                 f"lmbda={spec['lmbda']}", f"seed={spec['seed']}",
                 # the eager step (the speed-ups of issue 33 item 3 are measured by bench_train_fast)
                 "trainer.channels_last=false", "trainer.compile=false"]
    extra = list(spec.get("overrides", []))
    replaced = {o.split("=", 1)[0] for o in extra}
    overrides = [o for o in overrides if o.split("=", 1)[0] not in replaced] + extra
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = build_module(cfg)
    module.codec.backbone.load_state_dict(torch.load(spec["init_path"]))
    batches = _load_batches(spec)
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    trainer = pl.Trainer(
        accelerator="gpu" if spec["device"] == "cuda" else "cpu", devices=1,
        max_steps=len(batches), max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[callback_factory(pl.Callback)])
    trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != len(batches):
        raise RuntimeError(f"Lightning ran {trainer.global_step} of {len(batches)} steps")
    return trainer, module


def _loss_of(outputs):
    return outputs["loss"] if isinstance(outputs, dict) else outputs


def timed_fit(spec: dict, variant: str = "codecx", on_end=None):
    """`_fit_codecx` timed step by step by a Meter; `on_end(trainer, pl_module)` runs after
    each step, outside the timed region. Returns (meter, trainer, module)."""
    import torch

    torch.set_num_threads(spec["threads"])
    meter = Meter(spec, variant)

    def factory(base):
        class Timer(base):
            def on_train_start(self, trainer, pl_module):
                meter.baseline()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                meter.start(batch_idx)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                meter.end(_loss_of(outputs))
                if on_end is not None:
                    on_end(trainer, pl_module)
        return Timer()

    trainer, module = _fit_codecx(spec, factory)
    return meter, trainer, module


def worker_codecx(spec: dict) -> Dict[str, dict]:
    return {"codecx": timed_fit(spec, "codecx")[0].result()}


def worker_paired(spec: dict) -> Dict[str, dict]:
    """Both variants in one process, alternating step by step (timing only).

    Step i of the plain loop runs right before codecx's step i (even i) or right after it
    (odd i), outside codecx's timed region, on the same batch with the same noise seed; so
    each pair of steps sees the same load on a shared machine.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    plain = PlainLoop(spec)
    mp, mc = Meter(spec, "plain"), Meter(spec, "codecx")

    def plain_step(x, i):
        mp.start(i, gap_ok=False)
        loss = plain.step(x)
        mp.end(loss)

    def factory(base):
        class Paired(base):
            def on_train_start(self, trainer, pl_module):
                mp.baseline()
                mc.baseline()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx % 2 == 0:
                    plain_step(batch, batch_idx)
                mc.start(batch_idx, gap_ok=batch_idx % 2 == 1)  # no plain step in the gap

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                mc.end(_loss_of(outputs))
                if batch_idx % 2 == 1:
                    plain_step(batch, batch_idx)
        return Paired()

    _fit_codecx(spec, factory)
    return {"plain": mp.result(), "codecx": mc.result()}


WORKERS = {"plain": worker_plain, "codecx": worker_codecx, "paired": worker_paired}


def _worker_main(argv: List[str], workers: Optional[Dict] = None) -> None:
    """`python -m <module> WORKER SPEC.json OUT.json`: run `workers[WORKER](spec)`, write JSON."""
    worker, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    res = (workers or WORKERS)[worker](spec)
    Path(out_path).write_text(json.dumps(res))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
