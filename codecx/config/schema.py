"""Typed schemas of the root configs of train.py and eval.py (Hydra structured configs)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from codecx.models.backbones import SCALE_LEVELS


@dataclass
class ModelConfig:
    """The keys every backbone takes (documentation; the `model` node itself is untyped so a
    backbone adds its own keys, checked against its constructor by the pre-flight check)."""

    _target_: str = "codecx.models.backbones.MbtMean"
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
    invert: bool = False   # inverse training (Rethinking Latent Variable, WACV 2026): each training image also as 1 - x
    pin_memory: Optional[bool] = None  # page-locked batches (null: when CUDA is available)
    seed: Optional[int] = None  # data order, crops, flips from their own generators (null: the global RNG)


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
    enable_progress_bar: bool = True  # codecx's bar: steps of max_steps, bpp, PSNR, s/it
    enable_model_summary: bool = False  # Lightning's layer table (train.py prints one line instead)
    accumulate_grad_batches: int = 1  # batches per optimizer step (LitCodec's own; max_steps counts steps)
    # issue 33 item 3 (codecx.lit.speed; docs/manual/training.md, "A faster step"), LitCodec's own keys:
    channels_last: bool = False  # transforms in channels-last (NHWC) in training: no gain on CPU; trainer=gpu sets it
    compile: Any = "auto"        # torch.compile of g_a, h_a, h_s, g_s: true, false or auto (runs of >= 500 steps)


@dataclass
class CheckpointConfig:
    every_n_steps: int = 100
    monitor: str = "val/loss"
    keep_steps: List[int] = field(default_factory=list)  # also saved as checkpoints/step=K.ckpt


@dataclass
class TrainEvalConfig:
    """Real-bitstream evaluation during training (codecx.eval.callback.RealBitstreamEval)."""

    every_n_steps: int = 100          # 0: only the final evaluation at the end of training
    max_images: Optional[int] = 2     # periodic evaluations use the first N validation images
    final_max_images: Optional[int] = None  # the final evaluation (null: every validation image)
    log_images: int = 2               # reconstruction panels logged to W&B / TensorBoard per evaluation
    anchor: Optional[str] = None      # val/delta_rate, val/delta_psnr against: mbt2018-mean, a JSON, jpeg, webp
    fid_weights: Optional[str] = None  # torch-fidelity's InceptionV3 file: val/fid, val/kid
    fid_patch: int = 256              # FID/KID patch size (HiFiC's 256)
    lpips_weights: Optional[str] = None  # torchvision's alexnet-owt-7be5be79.pth: val/lpips
    write_results: bool = True        # the final evaluation as results.json in the run dir


@dataclass
class SweepReportConfig:
    """`codecx report` of a multirun when it ends (codecx.eval.sweep.SweepReport)."""

    enabled: bool = True
    baseline: Optional[str] = None    # KEY=VALUE[,KEY=VALUE] of the baseline group (null: the first)
    data_val_dir: Optional[str] = None  # evaluate every run on these images (null: its own results.json)
    anchor: Optional[str] = None      # every group against this curve too (packaged, JSON, jpeg, webp)
    replicates: Optional[str] = None  # e.g. seed: BD figures as means over seeds


@dataclass
class TrainConfig:
    lmbda: float = 0.0067
    alpha: Optional[float] = None  # the command line's shorthand of reg.alpha (reg=cse); null: the reg's own
    seed: int = 1
    base_dir: Optional[str] = None  # experiment=finetune: the base zoo (one run dir lmbda=L per lambda)
    model: Dict[str, Any] = field(default_factory=dict)  # a backbone node (see ModelConfig)
    quantizer: Dict[str, Any] = field(default_factory=dict)
    reg: Dict[str, Any] = field(default_factory=dict)
    schedule: Dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    sweep_report: SweepReportConfig = field(default_factory=SweepReportConfig)
    resume: bool = True
    transform: Dict[str, Any] = field(default_factory=dict)   # multi-select: {name: _target_ node}
    refine: Dict[str, Any] = field(default_factory=dict)      # multi-select: {name: _target_ node}
    distortion: Dict[str, Any] = field(default_factory=dict)
    rate: Dict[str, Any] = field(default_factory=dict)


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
    # MSE_t / MSE_a / MSE_q per image (Rethinking Latent Variable, WACV 2026, eq. 11; codecx.metrics.decompose)
    decompose: bool = False


@dataclass
class EvalConfig:
    """Root of conf/eval.yaml: checkpoints (or a CompressAI state dict via model.weights), data, metrics."""

    ckpt: Any = None                 # a checkpoint path, or a list of them (one RD curve)
    name: Optional[str] = None       # the results' name (default: the model name)
    description: str = ""
    model: Optional[Dict[str, Any]] = None  # a backbone node (see ModelConfig)
    quantizer: Dict[str, Any] = field(default_factory=dict)  # empty: the checkpoint's own quantizer
    shift: Dict[str, Any] = field(default_factory=dict)      # empty: no latent shift (shift=latent, ...)
    transform: Dict[str, Any] = field(default_factory=dict)  # multi-select: {name: _target_ node}
    refine: Dict[str, Any] = field(default_factory=dict)     # multi-select: {name: _target_ node}
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    threads: Optional[int] = None    # torch threads for coding (null: the idle cores, at least 1)
    scale_levels: Optional[int] = None  # Gaussian CDF scale table (null: the model's; 64: CompressAI's)
    progress: bool = True
    max_pixels: int = 2**28          # larger images are skipped with a warning (the coder's cap)


def run_name(overrides: str, max_len: int = 200) -> str:
    """A run folder name from Hydra's override_dirname: '/', '*', '?' -> '_', long names
    shortened + hashed."""
    s = re.sub(r"[/*?]", "_", overrides) if overrides else "default"
    if len(s) > max_len:
        s = f"{s[: max_len - 9]}-{hashlib.sha1(s.encode()).hexdigest()[:8]}"
    return s


def sweep_name(task: Any, exclude: Any = ()) -> str:
    """A sweep folder name from a multirun's command-line overrides (`hydra.overrides.task`),
    sorted, without the `exclude` keys (those of override_dirname): the same command gives the
    same folder, so rerunning it resumes every job from its own last.ckpt."""
    skip = {str(k) for k in (exclude or ())}
    items = sorted(str(o) for o in (task or ()) if str(o).split("=", 1)[0].lstrip("+~") not in skip
                   and not str(o).lstrip("+~").startswith("hydra."))
    return run_name(",".join(items))


def _sweep_name_resolver(*, _root_: Any) -> str:
    """`${codecx_sweep_name:}`: `sweep_name` of the multirun's own overrides, computed once in
    the launching config and kept in its resolver cache, which Hydra copies into every job's
    config (in a job, hydra.overrides.task holds only that job's overrides)."""
    cache = OmegaConf.get_cache(_root_).setdefault("codecx_sweep_name", {})
    if "name" not in cache:
        hydra = _root_.hydra
        cache["name"] = sweep_name(hydra.overrides.task, hydra.job.config.override_dirname.exclude_keys)
    return cache["name"]


def first_set(*values: Any) -> Any:
    """`${codecx_or:${alpha},0.0}`: the first value that is not null (a group's own default after a
    root shorthand: reg=cse's `alpha: ${codecx_or:${alpha},0.0}` is 0.0 unless the command line says alpha=1)."""
    return next((v for v in values if v is not None), None)


def register_configs() -> None:
    """Register the schemas (`train_schema`, `eval_schema`) and the `codecx_run_name`,
    `codecx_sweep_name` and `codecx_or` resolvers."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)
    OmegaConf.register_new_resolver("codecx_or", first_set, replace=True)
    OmegaConf.register_new_resolver("codecx_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("codecx_sweep_name", _sweep_name_resolver, replace=True)
