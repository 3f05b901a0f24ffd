"""Loggers and dashboard helpers: W&B's automatic offline mode and run naming, the resolved
config as W&B run config / TensorBoard hparams (an HParams session per run, so a sweep's runs
compare in TensorBoard's HParams view), uint8 reconstruction panels, the RD figures and points
to W&B and TensorBoard alike, learning rates."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor


def wandb_has_credentials() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def hydra_names(save_dir: str | os.PathLike) -> Tuple[str, Optional[str]]:
    """(run name, group) of a run writing to `save_dir`: the run directory's name, and in a
    Hydra multirun the sweep directory's name (the group `codecx.eval.sweep` also uses)."""
    name, group = Path(save_dir).resolve().name, None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                group = Path(str(hc.sweep.dir)).name
    except Exception:  # noqa: BLE001 - outside Hydra: no group
        pass
    return name, group


def wandb_logger(project: str = "codecx", save_dir: str = ".", mode: str = "auto",
                 name: Optional[str] = None, group: Optional[str] = None, job_type: str = "train",
                 **kwargs):
    """A WandbLogger that runs offline when there are no credentials (mode=auto), named after
    the run directory and grouped by the sweep directory (null `name` / `group`)."""
    from pytorch_lightning.loggers import WandbLogger

    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode={mode!r}: choose auto, online, offline or disabled")
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    auto_name, auto_group = hydra_names(save_dir)
    return WandbLogger(project=project, save_dir=save_dir, mode=mode, name=name or auto_name,
                       group=group or auto_group, job_type=job_type, **kwargs)


# ---------------------------------------------------------------- the resolved config
NOT_HPARAMS = ("hydra", "sweep_report", "callbacks", "logger")  # bookkeeping, not the experiment


def resolved_config(cfg: Any, skip: Sequence[str] = NOT_HPARAMS) -> Dict[str, Any]:
    """The run's config as plain containers, interpolations resolved (`${alpha}` -> 1.0); a
    top-level node that cannot be resolved here (a Hydra-only resolver) is left out."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: Dict[str, Any] = {}
    for k in cfg.keys():
        if k in skip:
            continue
        try:
            v = cfg[k]
            out[str(k)] = OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
        except Exception:  # noqa: BLE001
            continue
    return out


def flatten_config(config: Mapping[str, Any], prefix: str = "",
                   skip: Sequence[str] = NOT_HPARAMS) -> Dict[str, Any]:
    """{'model.N': 8, 'reg.cse.alpha': 1.0, 'lmbda': 0.0067, ...}: every leaf of a (resolved)
    config under its dotted path; lists as text, None as 'null' (TensorBoard's hparams and W&B
    filters take scalars), `_target_` kept (it names the class)."""
    out: Dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if not prefix and k in skip:
            continue
        if isinstance(v, Mapping):
            if not v:
                out[key] = "{}"
            out.update(flatten_config(v, f"{key}.", skip))
        elif isinstance(v, (list, tuple)):
            out[key] = str(list(v))
        elif v is None:
            out[key] = "null"
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class ConfigHyperparams(Callback):
    """Logs the flattened resolved config (model.*, quantizer, reg, schedule, lmbda, alpha, seed,
    data, transform, trainer, eval, ...) as every logger's hyperparameters: W&B's run config,
    TensorBoard's hparams, the CSV logger's hparams.yaml. Replaces Lightning's own call, which
    logs only the data module's settings (LitCodec saves no hparams)."""

    def __init__(self, config: Any):
        self.hparams = flatten_config(config if isinstance(config, dict) else resolved_config(config))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from pytorch_lightning.loggers import TensorBoardLogger

        # Lightning's _log_hyperparams runs after the setup hooks: with both switched off it
        # logs nothing (the data module's settings are in the config's data.* already)
        pl_module._log_hyperparams = False
        if trainer.datamodule is not None:
            trainer.datamodule._log_hyperparams = False
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                if trainer.is_global_zero:  # log_hyperparams is rank-zero only too
                    tensorboard_hparams(lg, self.hparams)
            else:
                lg.log_hyperparams(dict(self.hparams))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for lg in trainer.loggers:  # the HParams session ends (status: success)
            if isinstance(lg, TensorBoardLogger) and trainer.is_global_zero:
                try:
                    tensorboard_hparams(lg, self.hparams, end=True)
                except Exception:  # noqa: BLE001 - a closed writer: the session stays open, nothing else
                    pass


def tensorboard_hparams(logger: Any, params: Mapping[str, Any], end: bool = False) -> None:
    """The run's hyperparameters as a TensorBoard HParams session: its session-start record only
    (`end`: the session-end record), never the experiment record Lightning writes. Without one,
    TensorBoard's HParams view builds the experiment from every run of the log folder: the union
    of their hyperparameters (a sweep's runs differ in a few) and all their scalars as metrics
    (val/bpp, val/psnr, ...), where one run's experiment record would hide the others' keys and
    offer only Lightning's placeholder hp_metric. hparams.yaml is written as Lightning does."""
    from torch.utils.tensorboard.summary import hparams

    params = dict(params)
    _, start, stop = hparams(params, {})
    if not end:
        logger.hparams.update(params)  # hparams.yaml, written by logger.save()
    logger.experiment._get_file_writer().add_summary(stop if end else start)


# ---------------------------------------------------------------- learning rates
class LearningRates(Callback):
    """The learning rate of every optimizer, `train/lr_<name>` every `log_every_n_steps` codec
    steps: `codec`, then the auxiliary phases by name (`aux`: the entropy bottleneck's
    quantiles, a regularizer's own model, ...); `_pg<i>` per parameter group when an optimizer
    has several. LitCodec optimises manually, where Lightning's LearningRateMonitor would name
    them only lr-Adam, lr-Adam-1, ..."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # logged with the step's own metrics (Lightning writes them every log_every_n_steps)
        rates = learning_rates(trainer.optimizers, optimizer_names(pl_module, len(trainer.optimizers)))
        pl_module.log_dict(rates, on_step=True, on_epoch=False, batch_size=1)


def optimizer_names(pl_module: Any, n: int) -> List[str]:
    """Names of a LitCodec's `n` optimizers: codec, then its phases (opt<i> when unknown)."""
    phases = [getattr(p, "name", f"opt{i + 1}") for i, p in enumerate(getattr(pl_module, "phases", []))]
    names = (["codec"] + phases)[:n]
    return names + [f"opt{i}" for i in range(len(names), n)]


def learning_rates(optimizers: Sequence[Any], names: Sequence[str]) -> Dict[str, float]:
    """{'train/lr_codec': 1e-4, 'train/lr_aux': 1e-3, ...} of the optimizers' parameter groups."""
    out: Dict[str, float] = {}
    for opt, name in zip(optimizers, names):
        opt = getattr(opt, "optimizer", opt)  # LightningOptimizer
        groups = opt.param_groups
        for i, g in enumerate(groups):
            gname = g.get("name", f"pg{i}")  # schedule.group_lr names its groups; the rest is "codec"
            out[f"train/lr_{name}" + ("" if len(groups) == 1 or gname == name else f"_{gname}")] = float(g["lr"])
    return out


# ---------------------------------------------------------------- RD figures
def log_rd_figures(trainer: pl.Trainer, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                   png: str | os.PathLike, key: str = "val") -> int:
    """The RD points so far (`columns` x `rows`) and the RD plot `png` at the current step, to
    every W&B logger (a table and an image) and TensorBoard logger (a markdown text and an
    image); returns how many loggers."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    step, n = trainer.global_step, 0
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_table(f"{key}/rd_points", columns=list(columns), data=[list(r) for r in rows], step=step)
            lg.log_image(f"{key}/rd_plot", [str(png)], step=step)
        elif isinstance(lg, TensorBoardLogger):
            lg.experiment.add_text(f"{key}/rd_points", markdown_table(columns, rows), global_step=step)
            lg.experiment.add_image(f"{key}/rd_plot", png_array(png), global_step=step, dataformats="HWC")
        else:
            continue
        n += 1
    return n


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (TensorBoard's text plugin renders it); floats to 4 significant digits."""
    cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns),
                      *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)])


def png_array(path: str | os.PathLike) -> Any:
    """A PNG file as an (H, W, 3) uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- reconstructions
ZOOM = 4  # the crop row shows the central 1/ZOOM x 1/ZOOM of the image, ZOOM x larger


def _uint8(x: Tensor) -> Tensor:
    """(1,3,H,W) or (3,H,W) in [0,1] -> (H,W,3) uint8, rounded as the decoder writes a PNG."""
    x = x.detach().float().cpu()
    x = x[0] if x.dim() == 4 else x
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def crop_box(h: int, w: int, zoom: int = ZOOM) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the central crop a reconstruction panel zooms into."""
    ch, cw = max(1, h // zoom), max(1, w // zoom)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def reconstruction_panel(x: Tensor, x_hat: Tensor, zoom: int = ZOOM) -> Any:
    """One uint8 (2H, 2W, 3) numpy image: top row original | decoded; bottom row the central
    crop (`crop_box`) of each, enlarged `zoom` times by pixel repetition (black padding)."""
    a, b = _uint8(x), _uint8(x_hat)
    if a.shape != b.shape:
        raise ValueError(f"original {tuple(a.shape)} and decoded {tuple(b.shape)} images differ in size")
    h, w, _ = a.shape
    top, left, ch, cw = crop_box(h, w, zoom)
    panel = torch.zeros(2 * h, 2 * w, 3, dtype=torch.uint8)
    panel[:h, :w], panel[:h, w:] = a, b
    for col, img in ((0, a), (w, b)):
        crop = img[top:top + ch, left:left + cw]
        big = crop.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)[:h, :w]
        panel[h:h + big.shape[0], col:col + big.shape[1]] = big
    return panel.numpy()


def log_reconstructions(trainer: pl.Trainer, pairs: Sequence[Tuple[str, Tensor, Tensor]],
                        key: str = "val/reconstructions") -> int:
    """`reconstruction_panel`s of (name, x, x_hat) to every W&B and TensorBoard logger at the
    current step (uint8: W&B would cast floats in [0,1] to black); returns how many loggers."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    if not pairs:
        return 0
    panels = [reconstruction_panel(x, x_hat) for _, x, x_hat in pairs]
    captions = [f"{name}: original | decoded; below: central crop x{ZOOM}" for name, _, _ in pairs]
    step, n = trainer.global_step, 0
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key, panels, step=step, caption=captions)
        elif isinstance(lg, TensorBoardLogger):
            for (name, _, _), panel in zip(pairs, panels):
                lg.experiment.add_image(f"{key}/{name}", panel, global_step=step, dataformats="HWC")
        else:
            continue
        n += 1
    return n
