"""Packaged CompressAI Kodak anchor curves (codecx/data/anchors/<zoo-name>.json)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import List


def _anchor_dir() -> Path:
    """Directory holding the packaged anchor JSON files."""
    return Path(str(files("codecx.data").joinpath("anchors")))


def list_anchors() -> List[str]:
    """Names of the packaged anchors (CompressAI zoo names, e.g. 'mbt2018-mean')."""
    d = _anchor_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def anchor_path(name: str) -> Path:
    """Path of the packaged anchor `name`; ValueError listing the available names if unknown."""
    if name not in list_anchors():
        raise ValueError(f"unknown anchor {name!r}; available: {', '.join(list_anchors()) or '(none packaged)'}")
    return _anchor_dir() / f"{name}.json"


def load_anchor(name: str) -> dict:
    """Load a packaged anchor as a CompressAI-layout results dict."""
    from .bdrate import load_results

    return load_results(anchor_path(name))
