"""Typed schemas of the root configs of train.py and eval.py (Hydra structured configs) and their validation."""
from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from codecx.models.backbones import SCALE_LEVELS


@dataclass
class ModelConfig:
    _target_: str = "codecx.models.build_backbone"
    name: str = "mbt_mean"
    N: int = 128
    M: Optional[int] = 192
    weights: Optional[str] = None
    scale_levels: int = SCALE_LEVELS  # Gaussian CDF scale table (64: CompressAI's own bitstreams)


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
    shuffle: bool = True
    augment: bool = True   # random crops and flips (false: centre crops, for exact comparisons)


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
class TrainEvalConfig:
    """Real-bitstream evaluation during training (codecx.lit.callbacks.RealBitstreamEval)."""

    every_n_steps: int = 100          # 0: only the final evaluation at the end of training
    max_images: Optional[int] = 2     # periodic evaluations use the first N validation images
    final_max_images: Optional[int] = None  # the final evaluation (null: every validation image)
    log_images: int = 2               # reconstructions logged to W&B per evaluation
    anchor: Optional[str] = None      # packaged anchor drawn in the W&B RD plot (e.g. mbt2018-mean)


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
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    resume: bool = True


@dataclass
class LpipsOptions:
    enabled: bool = False
    net: str = "alex"
    weights: Optional[str] = None   # torchvision backbone file (or its folder); else the torch hub cache


@dataclass
class FidOptions:
    enabled: bool = False
    weights: Optional[str] = None   # torch-fidelity's InceptionV3 file (or its folder); else the hub cache
    patch: int = 256
    kid_subset_size: int = 1000


@dataclass
class MetricsOptions:
    lpips: LpipsOptions = field(default_factory=LpipsOptions)
    fid: FidOptions = field(default_factory=FidOptions)
    grad_corr: Optional[bool] = None  # corr(grad -log p, grad D) per image; null: on with a shift


@dataclass
class EvalConfig:
    """Root of conf/eval.yaml: checkpoints (or a CompressAI state dict via model.weights), data, metrics."""

    ckpt: Any = None                 # a checkpoint path, or a list of them (one RD curve)
    name: Optional[str] = None       # the results' name (default: the model name)
    description: str = ""
    model: Optional[ModelConfig] = None
    quantizer: Dict[str, Any] = field(default_factory=dict)  # empty: the checkpoint's own quantizer
    shift: Dict[str, Any] = field(default_factory=dict)      # empty: no latent shift (shift=latent, ...)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    threads: Optional[int] = None    # torch threads for coding (null: the idle cores, at least 1)
    scale_levels: Optional[int] = None  # Gaussian CDF scale table (null: the model's; 64: CompressAI's)
    progress: bool = True


def run_name(overrides: str, max_len: int = 200) -> str:
    """A run folder name from Hydra's override_dirname: '/', '*', '?' -> '_', long names
    shortened + hashed."""
    s = re.sub(r"[/*?]", "_", overrides) if overrides else "default"
    if len(s) > max_len:
        s = f"{s[: max_len - 9]}-{hashlib.sha1(s.encode()).hexdigest()[:8]}"
    return s


def register_configs() -> None:
    """Register the schemas (`train_schema`, `eval_schema`) and the `codecx_run_name` resolver."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)
    OmegaConf.register_new_resolver("codecx_run_name", run_name, replace=True)


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
        valid = _signature_keys(fn)
        if valid is None:
            continue
        unknown = [k for k in node.keys() if not str(k).startswith("_") and k not in valid]
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)} for {target}; "
                f"valid keys: {', '.join(valid) or '(none)'}")
        _check_value_types(group, node, fn, target)


def _check_value_types(group: str, node: DictConfig, fn, target: str) -> None:
    """A number or bool parameter given a value that is not one (e.g. `reg.alpha=abc`): the
    untyped groups have no schema, so the callable's annotations and defaults tell the type."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    names = {"bool": bool, "int": int, "float": float}
    for key, p in params.items():
        if key not in node:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        kind = names.get(ann) or (type(p.default) if type(p.default) in (bool, int, float) else None)
        if kind is None:
            continue
        try:  # only this key: others may hold interpolations resolvable only at run time
            v = node[key]
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} before Hydra runs
            continue
        if v is None or _fits(v, kind):
            continue
        what = {bool: "a true/false value", int: "an integer", float: "a number"}[kind]
        raise ConfigError(f"wrong type for {group}.{key}: {v!r} is not {what} ({target} expects "
                          f"{what}" + ("" if p.default is p.empty else f", default {p.default!r}") + ")")


def _fits(v: Any, kind: type) -> bool:
    """Whether config value `v` is usable as `kind` (numbers given as text count)."""
    if kind is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return kind is float or float(v).is_integer()
    try:
        kind(v)
        return True
    except (TypeError, ValueError):
        return False


def _safe(target: str):
    from hydra._internal.utils import _locate

    return _locate(target)


STORED_KEYS = ("lmbda", "alpha", "seed", "model", "quantizer", "reg", "schedule", "data")


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved parts of the config that define the model (stored in checkpoints)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
            else cfg[k] for k in STORED_KEYS if k in cfg}


def _signature_keys(fn) -> Optional[List[str]]:
    """Parameter names a callable accepts, or None when it takes **kwargs."""
    init = getattr(fn, "__init__", None) if inspect.isclass(fn) else None
    if init is not None and init is torch_module_init():
        return []
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n in sig.parameters if n != "self"]


def torch_module_init():
    import torch

    return torch.nn.Module.__init__


def precheck(overrides: List[str], config_dir: str, config_name: str = "train") -> None:
    """Compose the config for `overrides` (each sweep value in turn) and raise ConfigError
    with the valid choices / keys when a group option, key or value is wrong."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except Exception as e:  # noqa: BLE001 - hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides: {e}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    trials = [fixed]
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            trials += [fixed + [f"{key}={v}"] for v in o.sweep_string_iterator()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for trial in trials:
            try:
                cfg = compose(config_name, overrides=trial)
            except Exception as e:  # noqa: BLE001
                raise ConfigError(_explain(e, config_dir, config_name, trial)) from None
            check_targets(cfg, ["model", "quantizer", "shift", "reg", "schedule", "data", "logger"])
    GlobalHydra.instance().clear()


def group_option(group: str, name: str, config_dir: str, config_name: str = "eval") -> Dict[str, Any]:
    """The resolved `_target_` node of one config group option (e.g. quantizer=hex) as a dict;
    ConfigError listing the available options when `name` is not one of them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=[f"{group}={name}"])
            except Exception as e:  # noqa: BLE001
                raise ConfigError(_explain(e, config_dir, config_name)) from None
            check_targets(cfg, [group])
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg[group], resolve=True) or {}


def main_with_precheck(hydra_main, config_dir: str, config_name: str, prog: str) -> None:
    """Run a `@hydra.main` function after `precheck` of the command line's overrides (exit 2
    with the valid choices / keys on a configuration error)."""
    import sys

    args = sys.argv[1:]
    if not any(a.startswith("--") and a not in ("--multirun",) for a in args):
        try:
            precheck([a for a in args if not a.startswith("-")], config_dir, config_name)
        except ConfigError as e:
            print(f"{prog}: configuration error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    hydra_main()


def _explain(e: Exception, config_dir: str, config_name: str, overrides: List[str] = ()) -> str:
    """Hydra's composition error, plus the keys valid at the offending place (in the config the
    other `overrides` select, e.g. the keys of reg=cse for `reg=cse reg.alph=1`)."""

    from hydra import compose

    msg = str(e) + ("\n" + str(e.__cause__) if e.__cause__ else "")
    m = re.search(r"full_key: ([\w.]+)", msg) or re.search(r"override '([\w.]+)'", msg)
    first = msg.strip().splitlines()[0]
    if "Could not find" in first or "Available options" in msg:
        return msg.split("\nConfig search path")[0].strip()
    if m and ("not in" in msg or "not in struct" in msg):
        key = m.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        others = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
        try:
            base = compose(config_name, overrides=others)
        except Exception:  # noqa: BLE001 - another override is wrong too: the defaults
            base = compose(config_name)
        node = OmegaConf.select(base, parent) if parent else base
        valid = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "?"
        return (f"unknown key {key!r}; valid keys of {parent or 'the root'}: {valid} "
                f"(use +{key}=VALUE only to add a key on purpose)")
    if m and "could not be converted" in msg:
        conv = re.search(r"(Value .* could not be converted to \w+)", msg)
        return f"wrong type for {m.group(1)}: {conv.group(1) if conv else first}"
    return msg
