"""`python train.py`: compose the config, build the parts, train with Lightning, report."""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from codecx.conf import CONF_DIR
from codecx.config import (ConfigError, check_targets, hydra_run_dir, main_with_precheck, one_line,
                           register_configs, to_container)
from codecx.config.check import TARGET_GROUPS
from codecx.eval.callback import RealBitstreamEval
from codecx.eval.checkpoint import (DISK_FULL, AtomicCheckpointIO, BestCheckpoint, CheckpointWriteError,
                                    CorruptCheckpointError, LastCheckpoint, NonFiniteModelError, RunDirLock,
                                    RunDirLockedError, check_same_objective, remove_temp_files, resume_checkpoint)
from codecx.lit.module import LitCodec
from codecx.lit.speed import compile_setting
from codecx.lit.preempt import Preempted, SubmititRequeue, stop_on_sigterm
from codecx.lit.progress import StepProgressBar, quiet_libraries
from codecx.models.build import build_codec as _build_codec, instantiate_list
from codecx.models.codec import Codec

log = logging.getLogger("codecx")
NULL_IS_A_SETTING = {"check_val_every_n_epoch"}
#: the largest lmbda the pre-flight check accepts: 10^4 x CompressAI's largest MSE lambda (0.0932)
#: and ~5x its largest MS-SSIM one; gradients overflow float32 from ~1e15 (measured: 1e14 trains)
LMBDA_MAX = 1000.0
GROUPS = ["model", "quantizer", "reg", "schedule", "data", "logger"]

register_configs()


def build_codec(cfg: DictConfig) -> Codec:
    """The codec pipeline of a config: backbone, quantizer, latent transforms (and refiners)."""
    return _build_codec(to_container(cfg))


def build_module(cfg: DictConfig) -> LitCodec:
    """The LightningModule of a config: the codec, its regularizers, distortion, rate and schedule."""
    optional = lambda key: instantiate(cfg[key]) if cfg.get(key) else None  # noqa: E731
    return LitCodec(build_codec(cfg), instantiate_list(OmegaConf.to_container(cfg.reg, resolve=True)),
                    lmbda=cfg.lmbda, schedule=instantiate(cfg.schedule), config=to_container(cfg),
                    distortion=optional("distortion"), rate=optional("rate"),
                    accumulate_grad_batches=cfg.trainer.get("accumulate_grad_batches", 1),
                    channels_last=cfg.trainer.get("channels_last", False), compile=cfg.trainer.get("compile", False))


def build_callbacks(cfg: DictConfig) -> List[Any]:
    """The `callbacks` group's nodes, instantiated in order (a null node is dropped); a node
    without `_target_` or one that is not a Lightning Callback is a ConfigError naming it."""
    from pytorch_lightning.callbacks import Callback

    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"callbacks.{name}: needs a _target_ (e.g. +callbacks.{name}._target_="
                              "pytorch_lightning.callbacks.LearningRateMonitor), or null to drop it")
        try:
            cb = instantiate(node)
        except Exception as e:  # noqa: BLE001 - instantiate wraps the constructor's error
            cause = e.__cause__ if e.__cause__ is not None else e
            raise ConfigError(f"callbacks.{name}: cannot build {node._target_}: {one_line(cause)}") from None
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks.{name}: {node._target_} is not a Lightning Callback")
        out.append(cb)
    return out


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: List[Any] = ()) -> pl.Trainer:
    """A Lightning Trainer from the config, as in the lightning-hydra-template: `trainer:` its
    arguments, `logger:` the logger (with the flattened resolved config as its hyperparameters),
    `callbacks:` the extra callbacks (LearningRates, ...), plus checkpoints in
    `run_dir/checkpoints` (last.ckpt, best.ckpt) and the real-bitstream evaluation (`eval:`)."""
    from codecx.lit.loggers import ConfigHyperparams

    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    t.pop("accumulate_grad_batches", None)  # LitCodec accumulates (Lightning refuses it under manual optimisation)
    t.pop("channels_last", None)  # LitCodec's own too (codecx.lit.speed)
    t.pop("compile", None)
    strategy = t.pop("strategy")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy)
    # null means Lightning's default, except where null is itself a setting
    # (check_val_every_n_epoch=null: validate every val_check_interval steps across epochs)
    t = {k: v for k, v in t.items() if v is not None or k in NULL_IS_A_SETTING}
    ckpt_dir = run_dir / "checkpoints"
    last = LastCheckpoint(ckpt_dir, every_n_train_steps=cfg.checkpoint.every_n_steps,
                          keep_steps=cfg.checkpoint.get("keep_steps") or ())
    best = BestCheckpoint(ckpt_dir, monitor=cfg.checkpoint.monitor, mode="min")
    logger = instantiate(cfg.logger) if cfg.logger else False
    bar = [StepProgressBar()] if t.get("enable_progress_bar", True) else []
    evaluation = RealBitstreamEval(**OmegaConf.to_container(cfg.eval, resolve=True))
    extra = build_callbacks(cfg)
    if logger:
        extra.append(ConfigHyperparams(cfg))
    return pl.Trainer(strategy=strategy, logger=logger, plugins=[AtomicCheckpointIO()],
                      callbacks=[*bar, last, best, evaluation, *extra, *callbacks],
                      default_root_dir=str(run_dir), **t)


def _at_least(cfg: DictConfig, key: str, low: int, optional: bool = False, what: str = "") -> None:
    """ConfigError unless the integer at `key` is >= `low` (None allowed when `optional`)."""
    v = OmegaConf.select(cfg, key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key}={v}: must be an integer >= {low}{what}")


def _check_numbers(cfg: DictConfig) -> None:
    """Ranges of the numeric knobs (each failure names the key and what it takes)."""
    for key in ("lmbda", "alpha"):
        v = cfg[key]
        if key == "alpha" and v is None:  # the shorthand of reg.alpha, unset
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key}={v}: must be a finite number")
    if not cfg.lmbda > 0:
        raise ConfigError(f"lmbda={cfg.lmbda}: must be > 0 (e.g. 0.0018, 0.0035, 0.0067, 0.013)")
    if cfg.lmbda > LMBDA_MAX:
        raise ConfigError(
            f"lmbda={cfg.lmbda}: must be at most {LMBDA_MAX:g}; trained codecs use 0.0018-0.0932 "
            "(distortion=mse) or 2.4-220 (ms_ssim); far above, the rate term vanishes beside lmbda * "
            "distortion, and from about 1e15 Adam's squared gradients overflow float32 (non-finite "
            "gradient at step 0)")
    if cfg.alpha is not None and cfg.alpha < 0:
        raise ConfigError(f"alpha={cfg.alpha}: must be >= 0 (the weight reg.alpha of reg=cse)")
    if "N" in cfg.model:
        _at_least(cfg, "model.N", 1)
    if "M" in cfg.model:
        _at_least(cfg, "model.M", 1, optional=True)
    _at_least(cfg, "data.crop_size", 16, what=" (pixels of the training crops)")
    _at_least(cfg, "data.val_crop_size", 16, optional=True)
    _at_least(cfg, "data.batch_size", 1)
    _at_least(cfg, "data.val_batch_size", 1)
    _at_least(cfg, "data.num_workers", 0)
    _at_least(cfg, "data.repeat", 1)
    _at_least(cfg, "data.max_val_images", 1, optional=True)
    _at_least(cfg, "eval.every_n_steps", 0, what=" (0: only the final evaluation)")
    _at_least(cfg, "eval.max_images", 1, optional=True)
    _at_least(cfg, "eval.final_max_images", 1, optional=True)
    _at_least(cfg, "eval.log_images", 0)
    _at_least(cfg, "checkpoint.every_n_steps", 0)
    _at_least(cfg, "trainer.num_nodes", 1)
    _at_least(cfg, "trainer.log_every_n_steps", 1)
    _at_least(cfg, "trainer.accumulate_grad_batches", 1, what=" (batches per optimizer step)")
    try:
        compile_setting(cfg.trainer.get("compile", False))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    t = cfg.trainer
    if t.max_steps == 0 or t.max_epochs == 0:
        raise ConfigError(f"trainer.max_steps={t.max_steps}, trainer.max_epochs={t.max_epochs}: "
                          "0 trains nothing; set a positive number (-1: no limit)")
    if t.max_steps < -1 or t.max_epochs < -1:
        raise ConfigError(f"trainer.max_steps={t.max_steps}, trainer.max_epochs={t.max_epochs}: "
                          "must be positive (or -1: no limit)")
    if t.max_steps <= 0 and t.max_epochs <= 0:
        raise ConfigError("set trainer.max_steps (or trainer.max_epochs) to a positive number")
    for key in ("limit_train_batches", "limit_val_batches"):
        v = t[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                              or (key == "limit_train_batches" and v == 0)
                              or (isinstance(v, float) and v > 1)):
            raise ConfigError(f"trainer.{key}={v}: must be a fraction in (0, 1] or a number of "
                              "batches >= 1" + (" (0 trains nothing)" if key == "limit_train_batches" else ""))
    devices = t.devices
    if isinstance(devices, bool) or (isinstance(devices, int) and devices == 0) or (
            isinstance(devices, int) and devices < -1):
        raise ConfigError(f"trainer.devices={devices}: must be >= 1, -1 (all), 'auto' or a list "
                          "of device indices")


def _check_trainer(cfg: DictConfig) -> None:
    """Accelerator, devices, strategy and precision as Lightning's Trainer accepts them (built
    once, nothing run): e.g. accelerator=gpu without a GPU, precision=bogus."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    keys = ("accelerator", "devices", "num_nodes", "precision")
    args = {k: t[k] for k in keys if t.get(k) is not None}
    strategy = t.get("strategy")
    if isinstance(strategy, str):
        args["strategy"] = strategy
    quiet = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **args)
    except Exception as e:  # noqa: BLE001 - Lightning's MisconfigurationException, ValueError, ...
        given = ", ".join(f"trainer.{k}={v}" for k, v in args.items())
        raise ConfigError(f"{one_line(e)} ({given})") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def _check_data(cfg: DictConfig) -> None:
    """The training and validation images exist, are readable and fit the crops."""
    from codecx.data import check_images

    d = cfg.data
    check_images(d.source, d.train_dir, d.val_dir, d.crop_size, d.val_crop_size)


def validate_config(cfg: DictConfig, build: bool = True) -> None:
    """Checks that need the composed config, before anything is built or trained (run on every
    sweep job by the pre-flight check): keys, ranges, the trainer settings, the images, and
    (`build`) the model built once, so that e.g. quantizer=hex with bmshj_factorized fails here."""
    check_targets(cfg, TARGET_GROUPS)
    _check_numbers(cfg)
    _check_trainer(cfg)
    _check_data(cfg)
    if build:
        try:
            module = build_module(cfg)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - instantiate wraps the builders' errors
            cause = e.__cause__ if e.__cause__ is not None else e
            raise ConfigError(f"cannot build the model: {one_line(cause)}") from None
        try:  # one forward pass of one stride-sized image: e.g. a lattice on a factorized prior
            side = int(getattr(module.codec.backbone, "stride", 64))
            with torch.no_grad():
                module.codec.train()(torch.rand(1, 3, side, side))
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"the model does not run: {one_line(e)}") from None


def _is_launcher() -> bool:
    """True in the process that owns the run directory (not a DDP / SLURM worker rank)."""
    env = os.environ
    return all(int(env.get(k, "0") or 0) == 0 for k in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def final_report(trainer: pl.Trainer, module: LitCodec) -> Dict[str, float]:
    """The final real-bitstream evaluation of RealBitstreamEval (run now if `fit` skipped it)."""
    cb = next(c for c in trainer.callbacks if isinstance(c, RealBitstreamEval))
    return cb.final or cb.run_final(trainer, module) or {}


def run(cfg: DictConfig) -> Dict[str, float]:
    """Train according to `cfg` in the Hydra output dir; resume from last.ckpt if present (its
    kept previous version if last.ckpt is damaged). The run directory is locked for the run."""
    validate_config(cfg, build=False)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    lock = RunDirLock(run_dir).acquire() if _is_launcher() else None
    try:
        if lock is not None:
            remove_temp_files(ckpt_dir)
        return _train(cfg, run_dir, ckpt_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, run_dir: Path, ckpt_dir: Path) -> Dict[str, float]:
    quiet_libraries()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with stop_on_sigterm("before training started", "its checkpoints are unchanged; run the same "
                         "command again"):
        ckpt_path = resume_checkpoint(ckpt_dir) if cfg.resume else None
        if ckpt_path:
            check_same_objective(ckpt_path, to_container(cfg))
        datamodule = instantiate(cfg.data)
        module = build_module(cfg)
        requeue = SubmititRequeue()
        trainer = build_trainer(cfg, run_dir, callbacks=[requeue])
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    if trainer.is_global_zero:
        print(f"codecx: training {_describe(cfg, module)} -> {run_dir}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)
    except SIGTERMException:  # Lightning stopped at the end of a step; LastCheckpoint saved it
        name = signal.Signals(requeue.signum).name if requeue.signum else "SIGTERM"
        saved = _saved(ckpt_dir / "last.ckpt", trainer.global_step)
        if requeue.signum is not None:  # submitit's signal: it requeues the job, which resumes
            print(f"codecx: preempted ({name}) at step {trainer.global_step}: {saved}; submitit requeues "
                  "the job, which resumes from it", file=sys.stderr)
            requeue.requeue()
        raise Preempted(f"stopped by {name} at step {trainer.global_step}: {saved}; run the same "
                        "command again to resume") from None
    except Exception as e:
        part = _restoring(e) if ckpt_path else None
        if part == "training state":
            raise CorruptCheckpointError(
                f"cannot resume from {ckpt_path}: its training state does not fit this run "
                f"({type(e).__name__}: {one_line(e)}); it was written by another codecx version or "
                "configuration. Train in another folder (hydra.run.dir=DIR; hydra.sweep.dir=DIR with -m), "
                f"start over here with resume=false, or start from its weights only with model.weights={ckpt_path}"
            ) from e
        if part == "model":
            raise CorruptCheckpointError(
                f"cannot resume from {ckpt_path}: its model does not fit this run "
                f"({type(e).__name__}: {one_line(e)}); it was trained with another backbone or size. "
                "Train in another folder (hydra.run.dir=DIR; hydra.sweep.dir=DIR with -m), or start over "
                "here with resume=false") from e
        raise
    if not trainer.is_global_zero:
        return {}
    with stop_on_sigterm("during the final evaluation", f"training is complete ({ckpt_dir / 'last.ckpt'}, "
                         f"step {trainer.global_step}); run the same command again to evaluate it"):
        return _report(cfg, trainer, module, ckpt_dir)


def _report(cfg: DictConfig, trainer: pl.Trainer, module: LitCodec, ckpt_dir: Path) -> Dict[str, float]:
    """The final evaluation (unless fit ran it) and the summary on the console."""
    result = final_report(trainer, module)
    last, best = ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt"
    print(f"\ncodecx: trained {cfg.model.name} for {trainer.global_step} steps (lmbda={cfg.lmbda})")
    print(f"  checkpoint: {last if last.is_file() else best if best.is_file() else 'none written'}")
    if best.is_file():
        print(f"  best      : {best}")
    if trainer.logger is not None and trainer.logger.log_dir:
        print(f"  logs      : {trainer.logger.log_dir}")
    if result:
        print(f"  validation ({result['images']} images, real bitstreams): "
              f"bpp {result['bpp']:.4f} (estimate {result['bpp_est']:.4f}), "
              f"PSNR {result['psnr-rgb']:.2f} dB")
        for line in classical_lines(trainer, cfg, result):
            print(line)
    return result


def _saved(last: Path, step: int) -> str:
    """What a run stopped at `step` leaves to resume from, in words."""
    from codecx.eval.checkpoint import checkpoint_step

    held = checkpoint_step(last)
    if held == step:
        return f"{last} saved at this step"
    return f"{last} holds step {held}" if held >= 0 else "no checkpoint yet (it starts over)"


# Lightning's checkpoint_connector methods that restore each part of a checkpoint on resume
_RESTORING = {"training state": {"restore_training_state", "restore_optimizers_and_schedulers",
                                 "restore_optimizers", "restore_lr_schedulers", "restore_loops",
                                 "restore_callbacks", "restore_precision_plugin_state"},
              "model": {"restore_model"}}


def _restoring(e: BaseException) -> Optional[str]:
    """Which part of a checkpoint Lightning was restoring when `e` was raised ("training state"
    or "model"), None when `e` came from elsewhere (saving a checkpoint, a training step)."""
    frames = {f.name for f in traceback.extract_tb(e.__traceback__) if "checkpoint_connector" in f.filename}
    return next((part for part, names in _RESTORING.items() if frames & names), None)


def _describe(cfg: DictConfig, module: LitCodec) -> str:
    """One line for the console: the model, its size, the steps and the data."""
    size = {k: cfg.model[k] for k in ("N", "M") if k in cfg.model}
    params = sum(p.numel() for p in module.codec.parameters()) / 1e6
    steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else f"{cfg.trainer.max_epochs} epochs of"
    return (f"{cfg.model.name} ({', '.join(f'{k}={v}' for k, v in size.items())}{', ' if size else ''}"
            f"{params:.2f} M parameters), lmbda={cfg.lmbda}, {steps} steps on data={cfg.data.get('source', 'folder')}")


def classical_lines(trainer: pl.Trainer, cfg: DictConfig, result: Dict[str, float]) -> List[str]:
    """JPEG and WebP (Pillow) on the images of the final evaluation at the codec's own mean bpp
    (codecx.metrics.anchors.classical_at), and the gap in dB: is this a codec yet?"""
    from codecx.eval.loop import dataset_images
    from codecx.eval.callback import _val_dataset
    from codecx.metrics.anchors import classical_at

    dataset = _val_dataset(trainer)
    if dataset is None or not result.get("bpp"):
        return []
    images = dataset_images(dataset, cfg.eval.final_max_images)
    lines = []
    for codec, label in (("jpeg", "JPEG"), ("webp", "WebP")):
        try:
            at = classical_at(images, result["bpp"], codec)
        except Exception as e:  # noqa: BLE001 - a missing Pillow plugin must not fail the run
            lines.append(f"  {label:4s} at the same bpp: not computed ({type(e).__name__}: {e})")
            continue
        if at["psnr"] is None:
            if at["below"]:
                lo_bpp, lo_psnr = at["lowest"]
                lines.append(f"  {label:4s} at the same bpp: below the rates {label} reaches on these images "
                             f"(its lowest quality: {lo_bpp:.3f} bpp, {lo_psnr:.2f} dB)")
            else:
                lines.append(f"  {label:4s} at the same bpp: above the rates {label} reaches on these images")
            continue
        gap = result["psnr-rgb"] - at["psnr"]
        lines.append(f"  {label:4s} at the same bpp: PSNR {at['psnr']:.2f} dB (quality {at['quality'][0]}-"
                     f"{at['quality'][1]}); codecx {'+' if gap >= 0 else '-'}{abs(gap):.2f} dB")
    return lines


def _non_finite_errors() -> tuple:
    """NonFiniteModelError and the module's NonFiniteLossError (when it defines one)."""
    from codecx.lit import module as lit_module

    loss_error = getattr(lit_module, "NonFiniteLossError", None)
    return (NonFiniteModelError,) + ((loss_error,) if isinstance(loss_error, type) else ())


def _fail(message: Any, code: int, sweep_job: Optional[Path] = None) -> float:
    """One line on stderr and exit `code` (HYDRA_FULL_ERROR=1: re-raise for the traceback). In a
    multirun (`sweep_job`: the job's folder) the job is recorded as failed instead and the sweep
    goes on (its report names the job; the multirun then exits 1)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    text = one_line(_unwrap_worker_error(str(message)))
    print(f"codecx: {text}", file=sys.stderr)
    if sweep_job is None:
        raise SystemExit(code) from None
    from codecx.eval.results import record_failure

    record_failure(sweep_job, text, code)
    return math.nan


def _unwrap_worker_error(text: str) -> str:
    """A DataLoader worker's re-raised error carries the worker's traceback: keep its last line."""
    if "Original Traceback" not in text:
        return text
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _sweep_job_dir() -> Optional[Path]:
    """The job's folder when this run is a job of a multirun (else None)."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir) if hc.mode == RunMode.MULTIRUN else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """One run: configuration errors exit 2, run errors (locked directory, damaged checkpoint,
    non-finite training, disk full) exit 1, each with one line. A job of a multirun that fails
    is recorded (codecx.eval.results) and the other jobs run. SIGTERM (preemption) saves
    last.ckpt and exits 143 (`Preempted`), stopping a multirun too."""
    job = _sweep_job_dir()
    if job is not None:
        from codecx.eval.results import clear_failure

        clear_failure(job)
    try:
        result = run(cfg)
    except Preempted as e:  # SIGTERM: stops a multirun too (exit 143)
        print(f"codecx: {e.line}", file=sys.stderr)
        raise SystemExit(e.code) from None
    except ConfigError as e:
        return _fail(f"configuration error: {e}", 2, job)
    except (RunDirLockedError, CorruptCheckpointError, CheckpointWriteError) as e:
        return _fail(f"error: {e}", 1, job)
    except _non_finite_errors() as e:
        return _fail(f"error: {e}", 1, job)
    except (ValueError, FileNotFoundError) as e:  # data and build problems Lightning meets first
        return _fail(f"error: {e}", 1, job)
    except OSError as e:
        if e.errno in DISK_FULL:
            return _fail(f"error: {e}", 1, job)
        return _job_failed(e, job)
    except Exception as e:  # noqa: BLE001 - in a sweep, any failure is the job's, not the sweep's
        return _job_failed(e, job)
    return float(result.get("bpp", math.nan))


def _job_failed(e: Exception, job: Optional[Path]) -> float:
    """An unexpected error: re-raised in a single run; in a sweep job, recorded (the traceback in
    the job's log file) and the sweep goes on."""
    if job is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise e
    log.error("sweep job failed", exc_info=e)
    return _fail(f"error: {type(e).__name__}: {e}", 1, job)


def _check_run_dir(overrides: List[str]) -> None:
    """Before Hydra writes .hydra/ into the run directory: refuse if another run holds it."""
    import sys as _sys

    if "-m" in _sys.argv[1:] or "--multirun" in _sys.argv[1:] or not _is_launcher():
        return
    run_dir = hydra_run_dir(overrides, CONF_DIR, "train")
    if run_dir is None:
        return
    try:
        RunDirLock(run_dir).check()
    except RunDirLockedError as e:
        print(f"codecx: error: {e}", file=_sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    """Entry point: check every override (and every sweep job) first, then run Hydra; a multirun
    with a failed job exits 1 once every job ran and the report was written."""
    from codecx.eval.sweep import FAILED_JOBS, SWEEP_JOBS

    FAILED_JOBS.clear()
    main_with_precheck(_hydra_main, CONF_DIR, "train", "codecx", validate=validate_config,
                       before=_check_run_dir)
    if FAILED_JOBS:
        names = ", ".join(name for name, _ in FAILED_JOBS)
        print(f"codecx: error: {len(FAILED_JOBS)} of {SWEEP_JOBS[0]} sweep job(s) failed ({names}); the "
              "others ran; the reasons are above and in the sweep report", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
