"""The console of `python train.py`: one progress bar over the run's steps, and quiet libraries.

Lightning's default bar counts batches of an epoch ("Epoch 3/-2" when only max_steps is set)
and shows the logger's version number; a codec is trained for a number of steps, so the bar
here counts optimizer steps of `trainer.max_steps` (a resumed run starts where it stopped) and
shows the training batch's bpp and PSNR and the seconds per step.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, Dict

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

# messages a user cannot act on: Lightning's advertisement and a deprecation inside Lightning
_QUIET_INFO = ("💡 Tip:",)
_QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
                   # codecx saves after the optimizer step on purpose: last.ckpt of step k holds
                   # the weights after k steps, which is what resuming needs
                   r"Using ModelCheckpoint with manual optimization and every_n_train_steps.*")


class _DropPrefix(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_libraries() -> None:
    """Silence the library output of a training run that carries no information for the user
    (idempotent): Lightning's litlogger tip, its own pytree deprecation warning and its
    example-code warning about checkpoints under manual optimisation."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) for f in logger.filters):
            logger.addFilter(_DropPrefix(_QUIET_INFO))
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class StepProgressBar(TQDMProgressBar):
    """A training bar over global steps (`step k/max_steps`), with bpp, PSNR and s/it."""

    BAR = "{desc}: {n_fmt}/{total_fmt} steps |{bar}| [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self._shown = 0

    def init_train_tqdm(self):
        return Tqdm(desc="train", position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0.3, bar_format=self.BAR)

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.train_progress_bar.reset(total=total)
        self._shown = trainer.global_step
        self.train_progress_bar.n = self._shown  # a resumed run continues the count
        self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is None or bar.disable or not self._should_update(n, bar.total or 0):
            return
        bar.update(n - self._shown)
        self._shown = n
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: (f"{v:.3f}" if k == "bpp" else f"{v:.2f}") if isinstance(v, float) else v
                for k, v in metrics.items()}
