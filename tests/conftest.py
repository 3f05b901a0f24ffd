"""Shared fixtures: tiny codecs, real images, paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
KODAK = SHARED / "kodak"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def kodak_image():
    """kodim23 as a (1,3,H,W) tensor in [0,1] (skips when the shared data is absent)."""
    import numpy as np
    from PIL import Image

    path = KODAK / "kodim23.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    arr = np.asarray(Image.open(path).convert("RGB"), dtype="float32") / 255
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


def tiny_codec(name: str = "mbt_mean", quantizer: str = "noise", N: int = 8, M: int = 12):
    """A small codec for fast tests (real CompressAI layers and entropy models)."""
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import MixedQuantizer, NoiseQuantizer, STEQuantizer

    q = {"noise": NoiseQuantizer, "ste": STEQuantizer, "mixed": MixedQuantizer}[quantizer]()
    return Codec(build_backbone(name, N=N, M=None if name.startswith("cheng") else M), q)


def run_train(args, cwd=ROOT, timeout=600, env=None):
    """Run the real `python train.py ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=e)


TINY = ["model.N=8", "model.M=12", "data.crop_size=64", "data.batch_size=2", "data.repeat=1",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "data.max_val_images=1", "data.val_crop_size=64"]
