"""Logger factories that need more than a `_target_` (W&B's automatic offline mode)."""
from __future__ import annotations

import os
from pathlib import Path


def wandb_has_credentials() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(project: str = "codecx", save_dir: str = ".", mode: str = "auto", **kwargs):
    """A WandbLogger that runs offline when there are no credentials (mode=auto)."""
    from pytorch_lightning.loggers import WandbLogger

    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode={mode!r}: choose auto, online, offline or disabled")
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=project, save_dir=save_dir, mode=mode, **kwargs)
