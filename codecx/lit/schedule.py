"""Optimizers and learning-rate schedules (`schedule=compressai`, `schedule=cosine`)."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch.optim import Optimizer

SCHEDULERS = ("plateau", "multistep", "cosine", "constant")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class Schedule:
    """The codec optimizer, auxiliary optimizers and the codec's learning-rate schedule.

    `compressai`: Adam 1e-4 (aux 1e-3), ReduceLROnPlateau on `val/loss` or step decay at
    `milestones` (CompressAI's example trainer). `cosine`: linear warm-up over
    `warmup_steps`, then cosine decay to `min_lr` at the run's last step (MS-ILLM, HiFiC).
    """

    def __init__(self, name: str = "compressai", optimizer: str = "adam", lr: float = 1e-4,
                 aux_lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 weight_decay: float = 0.0, clip_max_norm: Optional[float] = 1.0,
                 scheduler: str = "plateau", plateau_factor: float = 0.5,
                 plateau_patience: int = 10, milestones: Sequence[int] = (), gamma: float = 0.1,
                 warmup_steps: int = 0, min_lr: float = 0.0):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"schedule.optimizer={optimizer!r}: choose one of {list(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"schedule.scheduler={scheduler!r}: choose one of {list(SCHEDULERS)}")
        for key, v in (("lr", lr), ("aux_lr", aux_lr)):
            if not v > 0:
                raise ValueError(f"schedule.{key}={v}: must be a positive learning rate")
        self.name, self.optimizer, self.lr, self.aux_lr = name, optimizer, float(lr), float(aux_lr)
        self.betas, self.weight_decay = tuple(float(b) for b in betas), float(weight_decay)
        self.clip_max_norm = None if clip_max_norm in (None, 0) else float(clip_max_norm)
        self.scheduler, self.plateau_factor = scheduler, float(plateau_factor)
        self.plateau_patience, self.milestones = int(plateau_patience), list(milestones)
        self.gamma, self.warmup_steps, self.min_lr = float(gamma), int(warmup_steps), float(min_lr)

    def codec_optimizer(self, params: Iterable) -> Optimizer:
        return OPTIMIZERS[self.optimizer](params, lr=self.lr, betas=self.betas,
                                          weight_decay=self.weight_decay)

    def lr_scheduler(self, opt: Optimizer, max_steps: int) -> Optional[dict]:
        """A Lightning-style scheduler dict for the codec optimizer (or None)."""
        if self.scheduler == "plateau":
            sch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=self.plateau_factor, patience=self.plateau_patience)
            return {"scheduler": sch, "interval": "epoch"}
        if self.scheduler == "multistep":
            sch = torch.optim.lr_scheduler.MultiStepLR(opt, self.milestones, self.gamma)
            return {"scheduler": sch, "interval": "step"}
        if self.scheduler == "cosine":
            total = max(int(max_steps), 1)
            warm, floor = self.warmup_steps, self.min_lr / self.lr

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = min(1.0, (step - warm) / max(1, total - warm))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

            sch = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"scheduler": sch, "interval": "step"}
        return None
