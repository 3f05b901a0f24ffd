"""Build a backbone by name and load CompressAI state dicts into it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from codecx.models.backbones import BACKBONES, SCALE_LEVELS, Backbone


def build_backbone(name: str, N: int = 128, M: Optional[int] = 192,
                   weights: Optional[str] = None, scale_levels: int = SCALE_LEVELS) -> Backbone:
    """Instantiate backbone `name` (one of BACKBONES) and optionally load `weights`;
    `scale_levels`: the scale table of its Gaussian CDF tables (64: CompressAI's own)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if int(scale_levels) < 2:
        raise ValueError(f"model.scale_levels={scale_levels}: need at least 2 (CompressAI: 64)")
    cls = BACKBONES[name]
    model = cls(N=int(N), M=None if M is None else int(M))
    model.scale_levels = int(scale_levels)
    if weights:
        load_weights(model, weights)
    return model


def load_weights(model: Backbone, path: str) -> Backbone:
    """Load a CompressAI state dict (bare, or under "state_dict") saved from the zoo model
    of the same architecture, or the backbone of a codecx train.py checkpoint (to fine-tune
    it, e.g. with another quantizer); CDF buffers of another size are resized (CompressAI)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"model.weights={path}: no such file. Point it at a state dict saved with "
            "torch.save(compressai_model.state_dict(), PATH) (nothing is downloaded)."
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem
        raise ValueError(f"model.weights={path}: not a readable PyTorch state dict ({e})") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"model.weights={path}: expected a state dict, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    prefix = "codec.backbone."  # a codecx checkpoint: its backbone's part
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"model.weights={path} does not fit {type(model).__name__}"
            f"(N={getattr(model, 'N', '?')}, M={getattr(model, 'M', '?')}): check model= "
            f"and model.N / model.M.\n{e}"
        ) from e
    return model
