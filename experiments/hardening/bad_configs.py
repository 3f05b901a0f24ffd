"""Bad train.py configurations: does each fail in the pre-flight check with one line?

    OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening/bad_configs.py [--subprocess N]

Runs the pre-flight check of `train.py` (`codecx.config.precheck` with `validate_config`, what
`train.py` runs before Hydra starts) on each configuration in-process; a configuration is
*clean* when it raises ConfigError with a one-line message. `--subprocess N` also runs the
first N through the real `python train.py` and checks exit code 2, one stderr line, no
traceback and no run directory.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TINY = ["model.N=8", "model.M=8"]


def bad_configs(tmp: Path):
    """(class, overrides) pairs."""
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    few = tmp / "one_image"
    few.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (80, 80)).save(few / "a.png")
    (tmp / "broken").mkdir(exist_ok=True)
    (tmp / "broken" / "x.png").write_bytes(b"not a png")
    return [
        ("unknown group option", ["model=foo"]), ("unknown group option", ["quantizer=nope"]),
        ("unknown group option", ["reg=nope"]), ("unknown group option", ["schedule=nope"]),
        ("unknown group option", ["data=nope"]), ("unknown group option", ["trainer=tpu9"]),
        ("unknown group option", ["logger=nope"]), ("unknown group option", ["experiment=nope"]),
        ("unknown key", ["model.foo=1"]), ("unknown key", ["trainer.foo=1"]), ("unknown key", ["data.foo=1"]),
        ("unknown key", ["+reg.foo=1", "reg=cse"]), ("unknown key", ["+schedule.lrr=1"]),
        ("unknown key", ["reg=cse", "reg.alph=1"]), ("unknown key", ["quantizer=hex", "quantizer.foo=1"]),
        ("unknown key", ["eval.foo=1"]), ("unknown key", ["checkpoint.foo=1"]), ("unknown key", ["foo=1"]),
        ("wrong type", ["lmbda=abc"]), ("wrong type", ["model.N=abc"]), ("wrong type", ["model.N=1.5"]),
        ("wrong type", ["data.batch_size=abc"]), ("wrong type", ["schedule.lr=abc"]),
        ("wrong type", ["reg=cse", "reg.alpha=abc"]), ("wrong type", ["quantizer=hex", "quantizer.max_joint=1.5"]),
        ("wrong type", ["trainer.max_steps=many"]), ("wrong type", ["resume=maybe"]), ("wrong type", ["seed=x"]),
        ("out of range", ["lmbda=0"]), ("out of range", ["lmbda=-1"]), ("out of range", ["lmbda=inf"]),
        ("out of range", ["lmbda=nan"]), ("out of range", ["alpha=-1"]), ("out of range", ["alpha=inf"]),
        ("out of range", ["model.N=0"]), ("out of range", ["model.M=0"]), ("out of range", ["model.N=-8"]),
        ("out of range", ["data.crop_size=0"]), ("out of range", ["data.crop_size=8"]),
        ("out of range", ["data.batch_size=0"]), ("out of range", ["data.val_batch_size=0"]),
        ("out of range", ["data.num_workers=-1"]), ("out of range", ["data.repeat=0"]),
        ("out of range", ["data.max_val_images=0"]), ("out of range", ["eval.every_n_steps=-1"]),
        ("out of range", ["eval.max_images=0"]), ("out of range", ["checkpoint.every_n_steps=-5"]),
        ("nothing to train", ["trainer.max_steps=0"]),
        ("nothing to train", ["trainer.max_epochs=0", "trainer.max_steps=-1"]),
        ("nothing to train", ["+trainer.limit_train_batches=0"]), ("nothing to train", ["trainer.max_steps=-5"]),
        ("trainer", ["trainer.devices=0"]), ("trainer", ["trainer.precision=bogus"]),
        ("trainer", ["trainer.accelerator=gpu"]), ("trainer", ["trainer.accelerator=warp"]),
        ("trainer", ["trainer.num_nodes=0"]), ("trainer", ["trainer.strategy=nope"]),
        ("data", ["data=folder"]), ("data", ["data=folder", "data.train_dir=/nonexistent/x"]),
        ("data", ["data=folder", f"data.train_dir={empty}"]),
        ("data", ["data=folder", f"data.train_dir={few}"]),
        ("data", ["data=folder", f"data.train_dir={tmp / 'broken'}", f"data.val_dir={tmp / 'broken'}"]),
        ("data", ["data.crop_size=4096"]), ("data", ["data.val_crop_size=4096"]),
        ("model", ["quantizer=hex", "model=bmshj_factorized"]), ("model", ["model.weights=/nonexistent.pth"]),
        ("model", ["schedule.stages=[{steps: 5, trainable: [nope]}]"]),
        ("sweep value", ["lmbda=0.0067,-1"]), ("sweep value", ["lmbda=0.1,abc"]),
        ("sweep value", ["model=mbt_mean,foo"]),
        ("sweep value", ["model=bmshj_factorized,mbt_mean", "quantizer=hex,noise"]),
        ("override syntax", ["lmbda=[1"]), ("override syntax", ["=1"]),
    ]


def main() -> int:
    from codecx.config import ConfigError, precheck
    from codecx.train import CONF_DIR, validate_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subprocess", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="codecx_bad_"))
    configs = bad_configs(tmp)
    clean, by_class = 0, {}
    print("| class | overrides | result |")
    print("|---|---|---|")
    for cls, ov in configs:
        try:
            precheck([*TINY, *ov], CONF_DIR, "train", validate_config)
            result, ok = "NOT REJECTED", False
        except ConfigError as e:
            msg = str(e)
            ok = "\n" not in msg
            result = ("" if ok else "MULTI-LINE: ") + msg[:110].replace("|", "/")
        except Exception as e:  # noqa: BLE001 - an uncaught error is a failure of the check
            result, ok = f"UNCAUGHT {type(e).__name__}: {str(e)[:80]}", False
        clean += ok
        n, c = by_class.get(cls, (0, 0))
        by_class[cls] = (n + 1, c + ok)
        print(f"| {cls} | `{' '.join(ov)}` | {result} |", flush=True)
    print(f"\n{clean} / {len(configs)} bad configurations rejected with one line before training")
    for cls, (n, c) in by_class.items():
        print(f"  {cls}: {c}/{n}")
    sub_ok = 0
    for cls, ov in configs[: a.subprocess]:
        run_dir = tmp / "run"
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, *ov, f"hydra.run.dir={run_dir}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        lines = r.stderr.strip().splitlines()
        ok = r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and not run_dir.exists()
        sub_ok += ok
        if not ok:
            print(f"  subprocess {' '.join(ov)}: exit {r.returncode}, {len(lines)} stderr lines: {lines[-1:]}")
    if a.subprocess:
        print(f"{sub_ok} / {min(a.subprocess, len(configs))} through the real train.py: exit 2, one line, "
              "no run directory")
    return 0 if clean == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
