"""`python train.py`: compose the config, build the parts, train with Lightning, report."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from codecx.config import (ConfigError, check_targets, main_with_precheck, register_configs,
                           to_container)
from codecx.lit.callbacks import LastCheckpoint, RealBitstreamEval
from codecx.lit.module import LitCodec
from codecx.models.codec import Codec

log = logging.getLogger("codecx")
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
NULL_IS_A_SETTING = {"check_val_every_n_epoch"}
GROUPS = ["model", "quantizer", "reg", "schedule", "data", "logger"]

register_configs()


def build_codec(cfg: DictConfig) -> Codec:
    """The codec pipeline of a config: backbone (model group) + quantizer group."""
    return Codec(instantiate(cfg.model), instantiate(cfg.quantizer))


def build_module(cfg: DictConfig) -> LitCodec:
    """The LightningModule of a config."""
    return LitCodec(build_codec(cfg), instantiate(cfg.reg), lmbda=cfg.lmbda,
                    schedule=instantiate(cfg.schedule), config=to_container(cfg))


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: List[Any] = ()) -> pl.Trainer:
    """A Lightning Trainer with checkpoints in `run_dir/checkpoints` (last.ckpt, best.ckpt) and
    real-bitstream evaluation (`eval:` of the config; `trainer.callbacks` lists it)."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = t.pop("strategy")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy)
    # null means Lightning's default, except where null is itself a setting
    # (check_val_every_n_epoch=null: validate every val_check_interval steps across epochs)
    t = {k: v for k, v in t.items() if v is not None or k in NULL_IS_A_SETTING}
    ckpt_dir = run_dir / "checkpoints"
    last = LastCheckpoint(ckpt_dir, every_n_train_steps=cfg.checkpoint.every_n_steps)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.checkpoint.monitor,
                           mode="min", save_top_k=1, auto_insert_metric_name=False)
    logger = instantiate(cfg.logger) if cfg.logger else False
    evaluation = RealBitstreamEval(**OmegaConf.to_container(cfg.eval, resolve=True))
    return pl.Trainer(strategy=strategy, logger=logger,
                      callbacks=[last, best, evaluation, *callbacks],
                      default_root_dir=str(run_dir), **t)


def validate_config(cfg: DictConfig) -> None:
    """Checks that need the composed config, before anything is built or trained."""
    check_targets(cfg, GROUPS)
    if not cfg.lmbda > 0:
        raise ConfigError(f"lmbda={cfg.lmbda}: must be > 0 (e.g. 0.0018, 0.0035, 0.0067, 0.013)")
    if cfg.alpha < 0:
        raise ConfigError(f"alpha={cfg.alpha}: must be >= 0")
    if cfg.trainer.max_steps <= 0 and cfg.trainer.max_epochs <= 0:
        raise ConfigError("set trainer.max_steps (or trainer.max_epochs) to a positive number")


def final_report(trainer: pl.Trainer, module: LitCodec) -> Dict[str, float]:
    """The final real-bitstream evaluation of RealBitstreamEval (run now if `fit` skipped it)."""
    cb = next(c for c in trainer.callbacks if isinstance(c, RealBitstreamEval))
    return cb.final or cb.run_final(trainer, module) or {}


def run(cfg: DictConfig) -> Dict[str, float]:
    """Train according to `cfg` in the Hydra output dir; resume from last.ckpt if present."""
    validate_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = build_trainer(cfg, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if not trainer.is_global_zero:
        return {}
    result = final_report(trainer, module)
    best = run_dir / "checkpoints" / "best.ckpt"
    print(f"\ncodecx: trained {cfg.model.name} for {trainer.global_step} steps (lmbda={cfg.lmbda})")
    print(f"  checkpoint: {last if last.is_file() else best}")
    if best.is_file():
        print(f"  best      : {best}")
    if trainer.logger is not None and trainer.logger.log_dir:
        print(f"  logs      : {trainer.logger.log_dir}")
    if result:
        print(f"  validation ({result['images']} images, real bitstreams): "
              f"bpp {result['bpp']:.4f} (estimate {result['bpp_est']:.4f}), "
              f"PSNR {result['psnr-rgb']:.2f} dB")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        result = run(cfg)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        raise SystemExit(2) from None
    return float(result.get("bpp", math.nan))


def main() -> None:
    """Entry point: check every override (and sweep value) first, then run Hydra."""
    main_with_precheck(_hydra_main, CONF_DIR, "train", "codecx")


if __name__ == "__main__":
    main()
