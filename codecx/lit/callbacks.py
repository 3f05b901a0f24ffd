"""Lightning callbacks: real-bitstream evaluation on the validation images during training."""
from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from codecx.evaluate import (dataset_images, evaluate, fingerprint_of, prepare, results_dict,
                             summarize)
from codecx.metrics.rd import NO_FINGERPRINT

LOGGED = {"bpp": "val/bpp", "bpp_est": "val/bpp_est", "bpp_streams": "val/bpp_streams",
          "psnr-rgb": "val/psnr", "ms-ssim": "val/ms_ssim"}


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` steps *and* at the end of training, always
    overwritten in place. (Lightning's `save_last` writes at the end only when it never wrote
    before, so a run whose max_steps is not a multiple of the interval would end with stale
    weights in last.ckpt, and resume or evaluate from them.)"""

    def __init__(self, dirpath, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # the last step: saved from the same place as the periodic ones, so that resuming
        # restores the same loop state (the logged step numbers continue without a gap)
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save_final(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._save_final(trainer)  # runs limited by max_epochs

    def _save_final(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RealBitstreamEval(Callback):
    """Codes the validation images to real codecx files every `every_n_steps` codec steps (first
    `max_images` images) and once when training ends (`final_max_images`, None: all), on rank 0,
    with a CPU copy of the codec (`update(force=True)`; the training model is left untouched).
    Logs val/bpp (file bytes), val/bpp_est, val/psnr, val/ms_ssim; with a WandbLogger also the
    RD points so far, an RD plot and `log_images` reconstructions. `final` holds the last result."""

    def __init__(self, every_n_steps: int = 100, max_images: Optional[int] = 2,
                 final_max_images: Optional[int] = None, log_images: int = 2,
                 anchor: Optional[str] = None):
        if every_n_steps < 0:
            raise ValueError(f"eval.every_n_steps={every_n_steps}: must be >= 0 (0: only at the end)")
        self.every_n_steps, self.max_images = every_n_steps, max_images
        self.final_max_images, self.log_images, self.anchor = final_max_images, log_images, anchor
        self.history: List[Dict[str, float]] = []
        self.final: Optional[Dict[str, float]] = None
        self._last_step = -1

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (self.every_n_steps and step > 0 and step % self.every_n_steps == 0
                and step not in (self._last_step, trainer.max_steps)  # the final one follows
                and trainer.is_global_zero):
            self._last_step = step
            self.run(trainer, pl_module, self.max_images)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.run_final(trainer, pl_module)

    def run_final(self, trainer: pl.Trainer, pl_module) -> Optional[Dict[str, float]]:
        """The end-of-training evaluation (also called by train.py when `fit` had nothing to do)."""
        self.final = self.run(trainer, pl_module, self.final_max_images)
        return self.final

    # ------------------------------------------------------------------ evaluation
    def run(self, trainer: pl.Trainer, pl_module, max_images: Optional[int]) -> Optional[Dict[str, float]]:
        """Evaluate a CPU copy of `pl_module.codec` on the validation images; log and return the mean."""
        dataset = _val_dataset(trainer)
        if dataset is None:
            return None
        images = dataset_images(dataset, max_images)
        codec = prepare(copy.deepcopy(pl_module.codec))
        config = getattr(pl_module, "config", {}) or {}
        fp = fingerprint_of(codec, config) if {"model", "quantizer"} <= set(config) else NO_FINGERPRINT
        pairs: List[Tuple[str, Tensor, Tensor]] = []

        def keep(name: str, x: Tensor, x_hat: Tensor) -> None:
            if len(pairs) < self.log_images:
                pairs.append((name, x, x_hat))

        rows = evaluate(codec, images, fp, progress=False, on_image=keep)
        point = summarize(rows)
        point["step"] = trainer.global_step
        self.history.append(point)
        metrics = {LOGGED[k]: v for k, v in point.items() if k in LOGGED and v == v}  # drop NaN
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        self._log_wandb(trainer, pairs)
        return point

    def _log_wandb(self, trainer: pl.Trainer, pairs: List[Tuple[str, Tensor, Tensor]]) -> None:
        """RD points table, RD plot and reconstructions to every WandbLogger (offline works too)."""
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        try:
            from codecx.metrics.rdplot import plot_rd

            cols = ["step", "bpp", "bpp_est", "psnr-rgb", "ms-ssim"]
            data = [[p.get(c) for c in cols] for p in self.history]
            with tempfile.TemporaryDirectory() as tmp:
                curve = results_dict("training (real bitstreams)", self.history)
                png = plot_rd([curve], Path(tmp) / "rd.png", anchors=[self.anchor] if self.anchor else ())
                recon = [torch.cat([x, x_hat], -1)[0].permute(1, 2, 0).numpy() for _, x, x_hat in pairs]
                captions = [f"{name}: original | decoded" for name, _, _ in pairs]
                step = trainer.global_step
                for lg in loggers:
                    lg.log_table("val/rd_points", columns=cols, data=data, step=step)
                    lg.log_image("val/rd_plot", [str(png)], step=step)
                    if recon:
                        lg.log_image("val/reconstructions", recon, step=step, caption=captions)
        except Exception as e:  # noqa: BLE001 - logging extras must never stop training
            warnings.warn(f"W&B RD plot / reconstructions not logged: {type(e).__name__}: {e}",
                          stacklevel=2)


def _val_dataset(trainer: pl.Trainer) -> Optional[Any]:
    """The validation image dataset: the datamodule's `val_set`, else the val dataloader's."""
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "val_set", None) is None and hasattr(dm, "setup"):
        dm.setup("validate")
    ds = getattr(dm, "val_set", None) if dm is not None else None
    if ds is None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        ds = getattr(loader, "dataset", None)
    return ds if ds is not None and len(ds) > 0 else None
