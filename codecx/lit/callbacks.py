"""Lightning callbacks: checkpoints written safely (atomic, fsynced, never non-finite; one
best.ckpt; a lock per run directory) and real-bitstream evaluation during training."""
from __future__ import annotations

import copy
import errno
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from codecx.evaluate import (dataset_images, evaluate, fingerprint_of, prepare, results_dict,
                             summarize)
from codecx.metrics.rd import NO_FINGERPRINT
from codecx.config import ConfigError
from codecx.evaluate import data_key, data_label, write_results
from codecx.metrics.anchors import CLASSICAL, resolve_anchor
from codecx.metrics.bdrate import POINT_DELTAS, point_deltas
from codecx.lit.loggers import log_reconstructions
from codecx.models.build import non_finite_tensors  # noqa: F401 - re-exported

LOGGED = {"bpp": "val/bpp", "bpp_est": "val/bpp_est", "bpp_streams": "val/bpp_streams",
          "psnr-rgb": "val/psnr", "ms-ssim": "val/ms_ssim",
          # against eval.anchor (RealBitstreamEval), and FID / KID with eval.fid_weights
          "delta_rate": "val/delta_rate", "delta_psnr": "val/delta_psnr",
          "delta_rate_msssim": "val/delta_rate_msssim", "delta_msssim_db": "val/delta_msssim_db",
          "fid": "val/fid", "kid": "val/kid",
          # LPIPS with eval.lpips_weights; the weight-free HF power ratio (codecx.metrics.realism)
          "lpips": "val/lpips", "hf_ratio": "val/hf_ratio"}


# the decomposition's ratios (Rethinking Latent Variable (WACV 2026) eq. 11)
LOGGED.update({"mse_a_ratio": "val/mse_a_ratio", "mse_q_ratio": "val/mse_q_ratio"})

PREVIOUS_SUFFIX = ".prev.ckpt"   # last.ckpt's previous version, kept to fall back on
TEMP_MARK = ".tmp-"              # checkpoints are written as .NAME.tmp-PID beside the target
LOCK_NAME = ".codecx.lock"


class NonFiniteModelError(RuntimeError):
    """The model's parameters hold NaN/Inf: the checkpoint is not written."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint in the run directory cannot be read to resume from."""


class RunDirLockedError(RuntimeError):
    """Another codecx run holds the lock of this run directory."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointWriteError(OSError):
    """A file could not be written (disk full, quota): names the path and what was kept."""


def _disk_full(e: BaseException) -> Optional[OSError]:
    """The ENOSPC / EDQUOT OSError behind `e` (torch's zip writer turns a failed write into a
    RuntimeError whose context is the OSError), None when the disk is not the cause."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None],
                 keep_previous: bool = False, what: str = "checkpoint") -> None:
    """Write `path` by `write(file)` without ever leaving a partial `path`: write `.NAME.tmp-PID`
    in the same directory (same filesystem), fsync, rename over `path`, fsync the directory.
    With `keep_previous`, the old `path` becomes NAME.prev.ckpt first (the fallback for resume).
    A full disk is CheckpointWriteError: one line naming the path and what was kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}"
    existed = path.is_file()
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e)
        if full is None:
            raise
        kept = (f"the previous {path.name} is kept unchanged" if existed else
                f"no partial {path.name} is left behind")
        reason = "no space left on device" if full.errno == errno.ENOSPC else os.strerror(full.errno).lower()
        error = CheckpointWriteError(f"cannot write {what} {path}: {reason}; {kept}; free space on "
                                     f"{path.parent} (or write elsewhere) and run again")
        error.errno = full.errno
        raise error from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> None:
    """`torch.save` through `atomic_write` (never a partial checkpoint; see there)."""
    atomic_write(path, lambda f: torch.save(obj, f), keep_previous)


def previous_path(path: str | os.PathLike) -> Path:
    """Where the previous version of checkpoint `path` is kept (last.ckpt -> last.prev.ckpt)."""
    p = Path(path)
    return p.with_name(p.name[: -len(".ckpt")] + PREVIOUS_SUFFIX if p.name.endswith(".ckpt")
                       else p.name + PREVIOUS_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made safe: atomic writes beside the target with fsync
    (`atomic_torch_save`; Lightning's default goes through a temp file of fsspec that a kill
    leaves behind), a refusal to write non-finite parameters, last.ckpt's previous version
    kept as last.prev.ckpt, and loading with weights_only=True (no code runs from a file)."""

    def __init__(self, keep_previous: Tuple[str, ...] = ("last.ckpt",)):
        super().__init__()
        self.keep_previous = tuple(keep_previous)

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteModelError(
                f"step {checkpoint.get('global_step', '?')}: parameters are not finite (NaN/Inf in "
                f"{', '.join(bad)}); {Path(path).name} was not written, the last finite checkpoint "
                "is kept")
        atomic_torch_save(checkpoint, path, keep_previous=Path(path).name in self.keep_previous)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class _FiniteSave:
    """Checkpoint callbacks never write a model whose parameters are not finite."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad = non_finite_tensors(dict(trainer.lightning_module.state_dict()))
        if bad:
            raise NonFiniteModelError(
                f"step {trainer.global_step}: parameters are not finite (NaN/Inf in {', '.join(bad)}); "
                f"{Path(filepath).name} was not written, the last finite checkpoint is kept")
        super()._save_checkpoint(trainer, filepath)


class LastCheckpoint(_FiniteSave, ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` steps *and* at the end of training, always
    overwritten in place. (Lightning's `save_last` writes at the end only when it never wrote
    before, so a run whose max_steps is not a multiple of the interval would end with stale
    weights in last.ckpt, and resume or evaluate from them.)"""

    def __init__(self, dirpath, every_n_train_steps: int, keep_steps: Sequence[int] = ()):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)
        self.keep_steps = set(int(k) for k in keep_steps)  # also kept as step=K.ckpt (never overwritten)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step in self.keep_steps and not trainer.sanity_checking:
            kept = Path(self.dirpath) / f"step={trainer.global_step}.ckpt"
            if not kept.is_file():  # e.g. BD-rate of step T against step 0.8 T (studies)
                self._save_checkpoint(trainer, str(kept))
        # the last step: saved from the same place as the periodic ones, so that resuming
        # restores the same loop state (the logged step numbers continue without a gap)
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save_final(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._save_final(trainer)  # runs limited by max_epochs

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM (Lightning stops at the end of the step) or submitit's preemption signal:
        last.ckpt at this step, so that resuming loses nothing (codecx.lit.preempt)."""
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        from codecx.lit.preempt import Preempted

        if isinstance(exception, (SIGTERMException, Preempted)):  # every rank (the save is collective)
            self._save_final(trainer)

    def _save_final(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class BestCheckpoint(_FiniteSave, ModelCheckpoint):
    """One `best.ckpt`: the lowest `monitor` so far, overwritten in place (never best-v1.ckpt);
    after a resume the restored best score decides whether a new one replaces it."""

    def __init__(self, dirpath, monitor: str = "val/loss", mode: str = "min"):
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                         auto_insert_metric_name=False, enable_version_counter=False,
                         save_on_train_epoch_end=False)  # after validation only: it has val/loss


class RunDirLock:
    """An exclusive lock on a run directory (`.codecx.lock`, flock: released by the OS when the
    process ends, even on kill -9), so that two runs never write into one directory."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        """Take the lock or raise RunDirLockedError naming the holder and the way out."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirLockedError(
                f"another run (pid {holder}) is using {self.path.parent} (lock {self.path}); wait "
                "for it to finish, or give this run its own directory (hydra.run.dir=DIR)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def check(self) -> None:
        """Raise RunDirLockedError if another process holds the lock (takes nothing)."""
        if not self.path.is_file():
            return
        self.acquire()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def remove_temp_files(ckpt_dir: str | os.PathLike) -> List[Path]:
    """Delete checkpoint temp files a killed run left in `ckpt_dir` (call under the run lock)."""
    d = Path(ckpt_dir)
    removed = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".") and TEMP_MARK in p.name and p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def _readable(path: Path) -> Optional[str]:
    """Why checkpoint `path` cannot be resumed from (unreadable, not a checkpoint, non-finite),
    or None when it is fine."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return "not a Lightning training checkpoint"
    bad = non_finite_tensors(ckpt["state_dict"])
    return f"non-finite parameters ({', '.join(bad)})" if bad else None


def resume_checkpoint(ckpt_dir: str | os.PathLike, name: str = "last.ckpt") -> Optional[Path]:
    """The checkpoint to resume from: `name` if readable, else its kept previous version (with
    a warning); None when neither exists; CorruptCheckpointError naming the way out otherwise."""
    last = Path(ckpt_dir) / name
    prev = previous_path(last)
    why = _readable(last) if last.is_file() else None
    if last.is_file() and why is None:
        return last
    if prev.is_file():
        why_prev = _readable(prev)
        if why_prev is None:
            if last.is_file():
                warnings.warn(f"{last} is damaged ({why}); resuming from the previous checkpoint "
                              f"{prev}", stacklevel=2)
            return prev
        if not last.is_file():
            why, last = why_prev, prev
    if not last.is_file():
        return None
    raise CorruptCheckpointError(
        f"cannot resume: {last} is damaged ({why}) and no usable previous checkpoint "
        f"({prev.name}) is there; start over in this directory with resume=false (its checkpoints "
        "are overwritten), or train in another one (hydra.run.dir=DIR)")


#: settings that define the training objective: a resume must not change them silently
OBJECTIVE_KEYS = ("lmbda", "distortion", "rate", "reg", "quantizer")  # reg=cse's alpha: reg.alpha


def _leaves(node: Any, prefix: str, out: Dict[str, Any]) -> Dict[str, Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node
    return out


def objective_changes(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """'KEY=OLD -> NEW' for each setting of OBJECTIVE_KEYS that differs between a checkpoint's
    codecx_config and this run's (a leaf both have, or a component `_target_` added / removed;
    a parameter a newer codecx added with its default is not a change)."""
    old, new = ({k: _leaves(c.get(k), k, {}) for k in OBJECTIVE_KEYS if k in c} for c in (stored, current))
    changes = []
    for key in OBJECTIVE_KEYS:
        a, b = old.get(key, {}), new.get(key, {})
        for leaf in sorted(set(a) | set(b)):
            if leaf in a and leaf in b:
                if a[leaf] != b[leaf]:
                    changes.append(f"{leaf}={a[leaf]} -> {b[leaf]}")
            elif leaf.endswith("_target_") or leaf == key:
                changes.append(f"{leaf}={a.get(leaf, 'unset')} -> {b.get(leaf, 'unset')}")
    return changes


def check_same_objective(ckpt_path: str | os.PathLike, config: Dict[str, Any]) -> None:
    """CorruptCheckpointError with the way out when the run would resume `ckpt_path` with another
    objective (lmbda, distortion, ...): its checkpoints would then record only the new values."""
    try:
        stored = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("codecx_config")
    except Exception:  # noqa: BLE001 - unreadable files are resume_checkpoint's business
        return
    changes = objective_changes(stored, config) if isinstance(stored, dict) else []
    if changes:
        raise CorruptCheckpointError(
            f"cannot resume from {ckpt_path}: this run changes the training objective "
            f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}), and its checkpoints would "
            "record only the new values. Train in another folder (hydra.run.dir=DIR; hydra.sweep.dir=DIR "
            f"with -m), fine-tune from its weights there (model.weights={ckpt_path}), or start over here "
            "with resume=false")


class RealBitstreamEval(Callback):
    """Codes the validation images to real codecx files every `every_n_steps` codec steps (first
    `max_images` images) and once when training ends (`final_max_images`, None: all), on rank 0,
    with a CPU copy of the codec (`update(force=True)`; the training model is left untouched).
    Logs val/bpp (file bytes), val/bpp_est, val/psnr, val/ms_ssim; with an `anchor` curve the
    one-point Bjøntegaard deltas val/delta_rate (%), val/delta_psnr (dB), val/delta_rate_msssim,
    val/delta_msssim_db (never extrapolated: outside the anchor's range they are not logged);
    with `fid_weights` (torch-fidelity's InceptionV3 file) val/fid and val/kid on patches of the
    decoded images (Heusel et al. 2017; Bińkowski et al. 2018); with `lpips_weights` (the
    torchvision AlexNet file) val/lpips; always val/hf_ratio (high-frequency power of the decoded
    images over the originals', codecx.metrics.realism). With a W&B or TensorBoard logger also
    the RD points so far, an RD plot and `log_images` reconstructions. `final` holds the last result;
    with `write_results` the final one (when it covers every validation image) is also written
    as `results.json` / `per_image.csv` in the run directory, which `codecx report` reuses."""

    def __init__(self, every_n_steps: int = 100, max_images: Optional[int] = 2,
                 final_max_images: Optional[int] = None, log_images: int = 2,
                 anchor: Optional[str] = None, fid_weights: Optional[str] = None,
                 fid_patch: int = 256, write_results: bool = False,
                 lpips_weights: Optional[str] = None):
        if every_n_steps < 0:
            raise ValueError(f"eval.every_n_steps={every_n_steps}: must be >= 0 (0: only at the end)")
        self.every_n_steps, self.max_images = every_n_steps, max_images
        self.final_max_images, self.log_images, self.anchor = final_max_images, log_images, anchor
        self.fid_weights, self.fid_patch, self.write_results = fid_weights, fid_patch, write_results
        self.lpips_weights, self._lpips = lpips_weights, None
        self.history: List[Dict[str, float]] = []
        self.final: Optional[Dict[str, float]] = None
        self._last_step = -1
        self._anchors: Dict[Tuple[str, ...], Optional[Dict[str, Any]]] = {}  # per image set
        self._warned: set = set()
        self._fid: Any = None
        self._rows: List[Dict[str, Any]] = []
        if anchor is not None and str(anchor).lower() not in CLASSICAL:
            try:  # a packaged curve or a results JSON: checked before training starts
                self._fixed_anchor: Optional[Dict[str, Any]] = resolve_anchor(anchor)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"eval.anchor: {e}") from None
        else:
            self._fixed_anchor = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.anchor is None or not trainer.is_global_zero:
            return
        dataset = _val_dataset(trainer)  # jpeg / webp: computed once, on both image sets
        if dataset is not None:
            for n in dict.fromkeys((self.max_images, self.final_max_images)):
                self._anchor_for(dataset_images(dataset, n))

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
        """The end-of-training evaluation (also called by train.py when `fit` had nothing to do);
        SIGTERM stops it at once (codecx.lit.preempt.Preempted: training itself is complete)."""
        from codecx.lit.preempt import stop_on_sigterm

        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        with stop_on_sigterm("during the final evaluation", f"training is complete ({last}, step "
                             f"{trainer.global_step}); run the same command again to evaluate it",
                             pending=trainer.received_sigterm):
            self.final = self.run(trainer, pl_module, self.final_max_images)
            if self.final is not None and self.write_results:
                self._write_results(trainer, pl_module, self.final)
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

        fid = self._fid_metric()
        rows = evaluate(codec, images, fp, lpips=self._lpips_metric(), fid=fid, progress=False,
                        on_image=keep, decompose=True)  # MSE_a / MSE_q shares (Rethinking Latent Variable, WACV 2026)
        with warnings.catch_warnings(record=True) as caught:  # FID/KID of too few patches
            warnings.simplefilter("always")
            point = summarize(rows, fid)
        for w in caught:
            self._warn_once("fid", f"val/fid, val/kid not logged: {w.message}")
        self._rows, anchor = rows, self._anchor_for(images)
        if anchor is not None:
            point.update(self._deltas(anchor, point))
        point["step"] = trainer.global_step
        self.history.append(point)
        metrics = {LOGGED[k]: v for k, v in point.items() if k in LOGGED and v == v}  # drop NaN
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        self._log_rd(trainer, anchor)
        try:  # uint8 original | decoded + zoomed crops to W&B and TensorBoard (codecx.lit.loggers)
            log_reconstructions(trainer, pairs)
        except Exception as e:  # noqa: BLE001 - logging extras must never stop training
            self._warn_once("recon", f"reconstructions not logged: {type(e).__name__}: {e}")
        return point

    def _anchor_for(self, images: List[Tuple[str, Tensor]]) -> Optional[Dict[str, Any]]:
        """The anchor curve for these images: the fixed one, or jpeg / webp computed on them once."""
        if self.anchor is None or self._fixed_anchor is not None:
            return self._fixed_anchor
        key = tuple(name for name, _ in images)
        if key not in self._anchors:
            try:
                self._anchors[key] = resolve_anchor(str(self.anchor).lower(), images)
            except Exception as e:  # noqa: BLE001 - a missing anchor must not stop training
                self._warn_once("anchor", f"eval.anchor={self.anchor}: anchor curve not computed "
                                          f"({type(e).__name__}: {e}); val/delta_* not logged")
                self._anchors[key] = None
        return self._anchors[key]

    def _deltas(self, anchor: Dict[str, Any], point: Dict[str, float]) -> Dict[str, float]:
        """val/delta_* of this point; one warning per metric the first time it is missing."""
        deltas = point_deltas(anchor, point)
        missing = [key for key, value in deltas.items() if value != value and key not in self._warned
                   and point.get(POINT_DELTAS[key][0]) == point.get(POINT_DELTAS[key][0])]
        if missing:  # one warning for all of them, once per metric
            self._warned.update(missing)
            warnings.warn("not logged (not extrapolated): " + "; ".join(
                f"{LOGGED[k]}: {_outside(anchor, point, *POINT_DELTAS[k], self.anchor)}" for k in missing),
                stacklevel=2)
        return deltas

    def _fid_metric(self) -> Any:
        """A FIDKID accumulator when `fid_weights` is set and loads; else None (one warning)."""
        if self.fid_weights is None or "fid_off" in self._warned:
            return None
        if self._fid is None:
            try:
                from codecx.metrics.fid import FIDKID

                self._fid = FIDKID(weights=self.fid_weights, patch=self.fid_patch)
            except Exception as e:  # noqa: BLE001 - FID must never block training
                self._warn_once("fid_off", f"val/fid, val/kid not logged: {e}")
                return None
        return self._fid

    def _lpips_metric(self) -> Any:
        """LPIPS-Alex (Zhang et al. 2018) when `lpips_weights` is set and loads; else None (one warning)."""
        if self.lpips_weights is None or "lpips_off" in self._warned:
            return None
        if self._lpips is None:
            try:
                from codecx.metrics.lpips import LPIPSMetric

                self._lpips = LPIPSMetric("alex", weights=self.lpips_weights)
            except Exception as e:  # noqa: BLE001 - LPIPS must never block training
                self._warn_once("lpips_off", f"val/lpips not logged: {e}")
                return None
        return self._lpips

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _write_results(self, trainer: pl.Trainer, pl_module, point: Dict[str, float]) -> None:
        """results.json / per_image.csv of the final evaluation in the run directory (the layout
        `codecx report` reads back instead of evaluating last.ckpt again)."""
        dataset = _val_dataset(trainer)
        config = getattr(pl_module, "config", {}) or {}
        if dataset is None or point.get("images") != len(dataset) or "data" not in config:
            return  # a subset of the images: the report must evaluate all of them itself
        run_dir = Path(trainer.default_root_dir)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        model = config.get("model", {}).get("name", "codec")
        res = results_dict(run_dir.name, [point], f"{model}, lmbda={config.get('lmbda')}, "
                           f"{int(point['images'])} image(s) ({data_label(config['data'])}), "
                           f"step {trainer.global_step}", checkpoints=[str(ckpt)],
                           lmbda=[config.get("lmbda")], images=[int(point["images"])],
                           data=data_key(config["data"]), step=trainer.global_step)
        write_results(run_dir, res, [{"checkpoint": str(ckpt), **r} for r in self._rows])

    def _log_rd(self, trainer: pl.Trainer, anchor: Optional[Dict[str, Any]] = None) -> None:
        """RD points table and RD plot to every W&B and TensorBoard logger (offline works too;
        `codecx.lit.loggers.log_rd_figures`); the reconstructions go through
        `codecx.lit.loggers.log_reconstructions`."""
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        from codecx.lit.loggers import log_rd_figures

        if not any(isinstance(lg, (WandbLogger, TensorBoardLogger)) for lg in trainer.loggers):
            return
        try:
            from codecx.metrics.rdplot import plot_rd

            cols = ["step", "bpp", "bpp_est", "psnr-rgb", "ms-ssim"]
            cols += [k for k in ("lpips", "hf_ratio", "fid", "kid") if any(k in p for p in self.history)]
            cols += [k for k in ("mse_a_ratio", "mse_q_ratio") if any(k in p for p in self.history)]
            cols += [k for k in POINT_DELTAS if any(k in p for p in self.history)]
            data = [[p.get(c) for c in cols] for p in self.history]
            with tempfile.TemporaryDirectory() as tmp:
                curve = results_dict("training (real bitstreams)", self.history)
                with warnings.catch_warnings():  # an anchor without MS-SSIM: its PSNR panel only
                    warnings.filterwarnings("ignore", message="skipping .* on 'ms-ssim'")
                    png = plot_rd([curve], Path(tmp) / "rd.png", anchors=[anchor] if anchor else ())
                log_rd_figures(trainer, cols, data, png)
        except Exception as e:  # noqa: BLE001 - logging extras must never stop training
            warnings.warn(f"RD plot / points not logged: {type(e).__name__}: {e}", stacklevel=2)


def _outside(anchor: Dict[str, Any], point: Dict[str, float], metric: str, kind: str,
             spec: Any) -> str:
    """Why a one-point delta is missing: the point against the anchor's range, in words."""
    import math

    from codecx.metrics.bdrate import anchor_curve, msssim_db

    name = f"anchor {spec}"
    try:
        ra, qa = anchor_curve(anchor, metric)
    except (KeyError, ValueError) as e:
        return f"{name} has no usable {metric} curve ({e})"
    unit = "dB" if metric == "psnr-rgb" else "dB (MS-SSIM)"
    if kind == "rate":
        q = point.get(metric, math.nan)
        q = float(msssim_db(q)) if metric == "ms-ssim" and q == q and q < 1 else q
        return (f"the run's {metric} {q:.2f} {unit} is outside {name}'s range "
                f"{qa[0]:.2f}-{qa[-1]:.2f} {unit}")
    return (f"the run's rate {point.get('bpp', math.nan):.4f} bpp is outside {name}'s range "
            f"{ra[0]:.4f}-{ra[-1]:.4f} bpp")


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
