"""Typed schema of the root training config (Hydra structured config) and its validation."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf


@dataclass
class ModelConfig:
    _target_: str = "codecx.models.build_backbone"
    name: str = "mbt_mean"
    N: int = 128
    M: Optional[int] = 192
    weights: Optional[str] = None


@dataclass
class DataConfig:
    _target_: str = "codecx.data.ImageDataModule"
    source: str = "sample"
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    crop_size: int = 256
    val_crop_size: Optional[int] = None
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 0
    max_val_images: Optional[int] = None
    repeat: int = 1


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = 200
    max_epochs: int = -1
    val_check_interval: Optional[Any] = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: int = 10
    limit_train_batches: Optional[Any] = None
    limit_val_batches: Optional[Any] = None
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_n_steps: int = 100
    monitor: str = "val/loss"


@dataclass
class TrainConfig:
    lmbda: float = 0.0067
    alpha: float = 0.0
    seed: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: Dict[str, Any] = field(default_factory=dict)
    reg: Dict[str, Any] = field(default_factory=dict)
    schedule: Dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    eval: Dict[str, Any] = field(default_factory=dict)
    resume: bool = True


def register_configs() -> None:
    """Make the schema available to Hydra as `train_schema` (first in conf/train.yaml)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


def check_targets(cfg: DictConfig, groups: List[str]) -> None:
    """Every `_target_` node's keys must be parameters of its callable (lists the valid ones)."""
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = node["_target_"]
        try:
            fn = get_method(target) if not inspect.isclass(_safe(target)) else _safe(target)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{group}._target_={target}: cannot be imported ({e})") from e
        sig = inspect.signature(fn)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        valid = [n for n in sig.parameters if n != "self"]
        unknown = [k for k in node.keys() if not str(k).startswith("_") and k not in valid]
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)} for {target}; "
                f"valid keys: {', '.join(valid)}")


def _safe(target: str):
    from hydra._internal.utils import _locate

    return _locate(target)


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain Python containers (stored in checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
