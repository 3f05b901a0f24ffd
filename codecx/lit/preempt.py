"""Preemption: SIGTERM (a cluster's or `kill`'s stop request) and the signal submitit sends a
SLURM job before preemption or its time limit (SIGUSR2, `SUBMITIT_PREEMPT_SIGNAL`).

During training Lightning's own SIGTERM handler stops at the end of the step (its
SIGTERMException), `LastCheckpoint.on_exception` saves last.ckpt at that step, and train.py
prints one line and exits 143 (128 + SIGTERM): nothing is lost on resume. Before training and
during the final evaluation `stop_on_sigterm` raises `Preempted` at once (no training state to
save there). Under submitit, `SubmititRequeue` turns submitit's signal into the same stop and
then hands it to submitit's handler, which pickles the job and requeues it (`scontrol requeue` on
SLURM; exit 144, which submitit's local controller restarts); the requeued job resumes from
last.ckpt (resume=true)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # 143: the shell's code for a process ended by SIGTERM


class Preempted(SystemExit):
    """A run stopped by a signal: `line` is the one line to print, the exit code 128 + signal."""

    def __init__(self, line: str, code: int = EXIT_SIGTERM):
        super().__init__(code)
        self.line = line


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_sigterm(stage: str, detail: str = "run the same command again", pending: bool = False
                    ) -> Iterator[None]:
    """While inside: SIGTERM raises `Preempted` ("stopped by SIGTERM `stage`; `detail`") at
    once; `pending` (a SIGTERM already received, e.g. Lightning's flag): raise on entry. The
    previous handler is restored on exit."""
    def raise_preempted(signum: int, frame: Any) -> None:
        raise Preempted(f"stopped by {signal.Signals(signum).name} {stage}; {detail}",
                        128 + int(signum))

    if pending:
        raise_preempted(signal.SIGTERM, None)
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_preempted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def submitit_signal() -> signal.Signals:
    """The signal submitit sends before preemption / the time limit (its SUBMITIT_PREEMPT_SIGNAL)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _submitit_handler() -> Optional[Callable[[int, Any], Any]]:
    """submitit's checkpoint-and-requeue handler when this process is a submitit job, else None."""
    if not _main_thread():
        return None
    h = signal.getsignal(submitit_signal())
    owner = getattr(h, "__self__", None)
    return h if callable(h) and type(owner).__module__.startswith("submitit") else None


class SubmititRequeue(Callback):
    """In a submitit job (hydra/launcher=submitit_slurm / submitit_local): submitit's preemption
    signal stops training at the end of the step like SIGTERM (last.ckpt saved there), then
    `requeue()` runs submitit's own handler (the job is requeued and resumes from last.ckpt).
    Outside submitit it does nothing."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._submitit = _submitit_handler()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._submitit is None:
            return

        def stop_at_step_end(signum: int, frame: Any) -> None:
            self.signum = signum
            # Lightning's SIGTERM flag: it raises SIGTERMException at the end of the step
            trainer._signal_connector.received_sigterm = True

        signal.signal(submitit_signal(), stop_at_step_end)

    def teardown(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if self._submitit is not None and _main_thread():
            signal.signal(submitit_signal(), self._submitit)

    def requeue(self) -> None:
        """Hand the received signal to submitit (pickles the job, requeues it, exits)."""
        if self.signum is not None and self._submitit is not None:
            self._submitit(self.signum, None)
