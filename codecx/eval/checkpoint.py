"""Checkpoints, saved and loaded in one place: written safely during training (atomic, fsynced,
never non-finite; last.ckpt's previous version kept; one best.ckpt; a lock per run directory),
chosen to resume from, and read back with `weights_only=True` (no code runs from a file)."""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from codecx.models.build import non_finite_tensors

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


class CheckpointError(ValueError):
    """A checkpoint path that does not hold a codecx training checkpoint."""


def safe_globals() -> List[Any]:
    """What codecx checkpoints may hold beyond tensors and plain containers (allow-listed for
    `torch.load(weights_only=True)`): paths stored in data hyper-parameters."""
    import pathlib

    return [pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath]


def torch_load_safe(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` with codecx's allow-list: a file whose unpickling
    would run code (or build any other object) is refused with one CheckpointError line."""
    import pickle

    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global: ([\w.]+)", text)
        if not found:  # not a pickle at all (garbage, a truncated file)
            raise CheckpointError(f"{what} {path}: not a readable PyTorch file (UnpicklingError: "
                                  f"{one_line_text(e)[:200]})") from None
        detail = f"the Python global {found.group(1)}"
        raise CheckpointError(
            f"{what} {path}: refused: loading it would need {detail}, which codecx never stores "
            "(checkpoints are loaded with weights_only=True, no code runs from a file); use a "
            "checkpoint written by codecx's train.py, or re-save the state dict you trust with "
            "torch.save(model.state_dict(), PATH)") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise CheckpointError(f"{what} {path}: not a readable PyTorch file ({type(e).__name__}: "
                              f"{one_line_text(e)[:300]})") from None


def one_line_text(e: BaseException) -> str:
    return " ".join(str(e).split())


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """The dict of a train.py checkpoint (loaded with weights_only=True: no code runs);
    CheckpointError with what is wrong otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file (train.py writes "
                              "<run dir>/checkpoints/last.ckpt and best.ckpt)")
    ckpt = torch_load_safe(p)
    if not isinstance(ckpt, dict) or "codecx_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path}: not a codecx training checkpoint (no 'codecx_config'/'state_dict'); "
            "evaluate a CompressAI state dict with model=NAME model.N=.. model.M=.. model.weights=PATH")
    return ckpt


def checkpoint_step(path: str | os.PathLike) -> int:
    """The training step a train.py checkpoint was saved at; -1 when the file is missing or
    unreadable."""
    p = Path(path)
    if not p.is_file():
        return -1
    try:
        return int(torch_load_safe(p).get("global_step", -1))
    except Exception:  # noqa: BLE001 - a damaged or foreign file
        return -1


def checkpoint_info(ckpt: Path) -> Tuple[int, Optional[Dict[str, Any]]]:
    """(global step, codecx_config) of a train.py checkpoint, read memory-mapped; (-1, None)."""
    if not ckpt.is_file():
        return -1, None
    try:
        d = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return int(d.get("global_step", -1)), d.get("codecx_config")
    except Exception:  # noqa: BLE001 - damaged or foreign: the report evaluates what it can
        return -1, None
