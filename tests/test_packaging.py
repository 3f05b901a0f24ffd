"""Packaging: the configs ship inside the package, so a built wheel (non-editable, no source tree
on the path) runs `codecx train`, `codecx eval` and `python -m codecx.train` from any directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY

TINY_RUN = [*TINY, "trainer.max_steps=1", "eval.every_n_steps=0"]


def _env() -> dict:
    """The environment of a user's shell: nothing points at the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return dict(env, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _run(cmd, cwd, timeout=900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


# ---------------------------------------------------------------------------- argv hand-over
@pytest.fixture(autouse=True)
def _clear_hydra():
    """An in-process Hydra main leaves GlobalHydra initialized: clear it for the next tests."""
    yield
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def test_train_and_eval_verbs_hand_overrides_to_hydra(capsys, monkeypatch, tmp_path):
    """`codecx train|eval ARGS` gives ARGS to Hydra untouched (here `--cfg job` and overrides)."""
    from codecx.cli import main

    monkeypatch.chdir(tmp_path)
    argv = list(sys.argv)
    assert main(["train", "--cfg", "job", "trainer.max_steps=7", "lmbda=0.013"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "lmbda: 0.013" in out
    assert main(["eval", "--cfg", "job", "ckpt=some/last.ckpt"]) == 0
    assert "ckpt: some/last.ckpt" in capsys.readouterr().out
    assert sys.argv == argv  # restored


def test_train_verb_rejects_a_bad_choice(capsys, monkeypatch, tmp_path):
    """The pre-flight check of the Hydra main runs behind the verb too: exit 2, the options listed."""
    from codecx.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", "model=no_such_model"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and "mbt_mean" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- the wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (so the shared tree gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "codecx", src / "codecx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", tmp / "dist", src], cwd=tmp)
    (whl,) = (tmp / "dist").glob("codecx-*.whl")
    return whl


@pytest.mark.medium
def test_wheel_holds_configs_and_anchors(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = ROOT / "codecx"
    wanted = [p.relative_to(ROOT).as_posix() for p in
              [*pkg.glob("conf/**/*.yaml"), *pkg.glob("data/anchors/*.json")]]
    assert "codecx/conf/train.yaml" in wanted and "codecx/conf/eval.yaml" in wanted
    assert any(n.startswith("codecx/data/anchors/") for n in wanted)
    missing = sorted(set(wanted) - names)
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_and_evaluates_from_any_directory(wheel, tmp_path):
    """pip install --no-deps of the wheel into a new venv that sees the installed dependencies
    (a path line, not the source tree), then the real commands in an empty directory."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-deps", "--no-index", wheel],
         cwd=tmp_path)
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).stdout.strip())
    # the dependencies of this environment; a plain path line runs none of its .pth files, so
    # the editable install of the source tree stays invisible
    (purelib / "deps.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    where = _run([py, "-c", "import codecx; print(codecx.__file__)"], cwd=work).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    codecx = venv / "bin" / "codecx"
    _run([py, "-m", "codecx.train", *TINY_RUN], cwd=work)
    (ckpt,) = work.glob("runs/train/*/checkpoints/last.ckpt")  # run dirs are relative to the cwd
    # quoted: the run dir's name holds the overrides ('=' and ',')
    _run([codecx, "eval", f"ckpt='{ckpt}'", "data.max_val_images=1", "data.val_crop_size=64", "progress=false"],
         cwd=work)
    (results,) = work.glob("runs/eval/*/results.json")
    assert "bpp" in results.read_text()
    # the codecx script with a Hydra sweep (-m): one run per seed
    _run([codecx, "train", "-m", *TINY_RUN, "seed=1,2"], cwd=work)
    assert len(list(work.glob("runs/sweep/*/*/checkpoints/last.ckpt"))) == 2
    assert "ckpt: last.ckpt" in _run([py, "-m", "codecx.eval.main", "--cfg", "job", "ckpt=last.ckpt"], cwd=work).stdout
