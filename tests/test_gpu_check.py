"""The GPU check (`make gpu-check`, scripts/gpu_check.py) and `make bench --device cuda` without
a CUDA device: a clear message and a distinct exit status, nothing run (issue 33 item 6)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.medium  # a subprocess (CUDA hidden, so the skip path runs on any machine)
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 77, r.stdout + r.stderr
    assert "gpu-check: skipped: torch sees no CUDA device" in r.stderr and "nothing was checked" in r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []  # no step ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_device_cuda_without_cuda_is_one_line(capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--only", "train_fast", "--device", "cuda"])
    assert e.value.code == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_makefile_has_gpu_check():
    text = (ROOT / "Makefile").read_text()
    assert "gpu-check:" in text and "scripts/gpu_check.py" in text
