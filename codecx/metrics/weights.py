"""Local-only resolution of pretrained metric weights (nothing is ever downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """A pretrained weights file needed by a metric is not available locally."""


def hub_cache_path(filename: str) -> Path:
    """Where torch.hub's load_state_dict_from_url would cache `filename` ($TORCH_HOME/hub/checkpoints/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(filename: str, path: str | os.PathLike | None = None, *, option: str = "", url: str = "",
                    what: str = "pretrained") -> Path:
    """Explicit `path` (a file, or a directory holding `filename`), else the torch hub cache, else raise."""
    cache = hub_cache_path(filename)
    if path is not None:
        p = Path(path).expanduser()
        p = p / filename if p.is_dir() else p
        if p.is_file():
            return p
        where = f"{option}={path} points to {p}, which does not exist"
    elif cache.is_file():
        return cache
    else:
        where = f"{option + ' is not set and ' if option else ''}the torch hub cache has no {cache}"
    raise MissingWeightsError(
        f"{what} weights '{filename}' not found ({where}). No download is attempted: copy '{filename}'"
        f"{f' (from {url})' if url else ''} to {cache}"
        f"{f', or set {option}=/path/to/{filename}' if option else ''}.")
