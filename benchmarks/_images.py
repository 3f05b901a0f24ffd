"""Benchmark images: Kodak from ../shared/data/kodak, or the embedded sample photos without it."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def kodak_paths(n: Optional[int] = None) -> List[Path]:
    """The first `n` Kodak PNGs (all with None); the sample photos when Kodak is absent."""
    paths = sorted(KODAK.glob("*.png"))[:n]
    if not paths:  # no shared data: the embedded sample photos
        from codecx.data.datamodule import sample_image_paths

        train, val = sample_image_paths()
        paths = [Path(p) for p in (list(val) + list(train))[:n]]
    return paths


def kodak_images(n: Optional[int] = None, crop: Optional[int] = None) -> List:
    """(1, 3, H, W) float images in [0, 1] of `kodak_paths(n)`, top-left `crop` x `crop` if set."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for p in kodak_paths(n):
        x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype="float32") / 255)
        x = x.permute(2, 0, 1).unsqueeze(0)
        out.append(x[..., :crop, :crop] if crop else x)
    return out
