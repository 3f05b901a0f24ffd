"""Loading state dicts into a backbone (CompressAI zoo files, codecx checkpoints, MS-ILLM's released
NeuralCompression files) and refusing non-finite ones. Imports nothing of codecx.models, so the
backbones' constructors (`weights=`) use it without an import cycle."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

import torch
from torch import nn


def non_finite_tensors(state: Mapping[str, Any], limit: int = 3) -> List[str]:
    """Names of (at most `limit`) floating-point tensors of a state dict holding NaN or Inf."""
    bad = []
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def is_nc_state(state: Mapping[str, Any]) -> bool:
    """True for a NeuralCompression `HiFiCAutoencoder` state dict (MS-ILLM's released weights)."""
    return any(k.startswith("encoder.blocks.") for k in state) and any(
        k.startswith("hyper_bottleneck.") for k in state)


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a CompressAI state dict (bare, or under "state_dict") saved from the zoo model
    of the same architecture, the backbone of a codecx train.py checkpoint (to fine-tune
    it, e.g. with another quantizer), or into model=hific a NeuralCompression `HiFiCAutoencoder`
    state dict (MS-ILLM's released `msillm_*.ckpt`; keys mapped by the model's `from_nc_state`,
    `codecx.models.hific.state_from_nc`); CDF buffers of another size are resized (CompressAI)."""
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
    if is_nc_state(state):  # NeuralCompression's HiFiCAutoencoder (MS-ILLM's released files)
        from_nc = getattr(model, "from_nc_state", None)  # model=hific's key mapping
        if from_nc is None:
            raise ValueError(f"model.weights={path} is a NeuralCompression HiFiCAutoencoder state dict "
                             f"(MS-ILLM's released weights): use model=hific, not {type(model).__name__}")
        state = from_nc(state)
    bad = non_finite_tensors(state)
    if bad:  # a NaN in g_a would hang the rANS encoder; refuse it here, naming the tensor
        raise ValueError(f"model.weights={path}: parameters are not finite (NaN/Inf in {', '.join(bad)}); "
                         "the file holds a diverged or damaged model: use an earlier checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"model.weights={path} does not fit {type(model).__name__}"
            f"(N={getattr(model, 'N', '?')}, M={getattr(model, 'M', '?')}): check model= "
            f"and model.N / model.M.\n{e}"
        ) from e
    return model
