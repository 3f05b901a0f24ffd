"""codecx benchmarks: timed comparisons printed as ratios against baselines measured in the same run.

`python -m benchmarks` (or `make bench`) runs every benchmark module and prints a summary table.

Convention: a benchmark is a module `benchmarks/bench_<name>.py` that defines

- ``run(args) -> list[Row]`` (rows may also be plain tuples ``(metric, value, target, unit)``),
- optionally ``add_arguments(parser)`` to add its own options (prefix them, e.g. ``--ts-...``),
- a module docstring whose first line describes it (shown by ``--list``).

``args`` carries the shared options of ``__main__``: ``quick``, ``device``, ``threads``,
``steps``, ``warmup``, ``rounds``, ``seed`` (``None`` means "the module's default").
A row with ``target`` set passes when ``value <= target`` (or ``>=`` with
``higher_is_better=True``); rows without a target are informational (absolute timings).
Measure the baseline in the same run and report ratios: absolute times vary from machine to
machine, ratios much less.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterable, Optional, Sequence, Union

PREFIX = "bench_"


@dataclass
class Row:
    """One reported figure: `metric` of `benchmark` is `value` `unit` (target optional)."""

    metric: str
    value: float
    target: Optional[float] = None
    unit: str = "ratio"
    note: str = ""
    higher_is_better: bool = False
    benchmark: str = ""

    @property
    def status(self) -> str:
        """`ok`, `MISS` (target not met), `-` (no target) or `n/a` (no value)."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        if self.target is None:
            return "-"
        met = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "ok" if met else "MISS"

    @classmethod
    def of(cls, item: Union["Row", Sequence], benchmark: str) -> "Row":
        """A Row from a Row or a tuple `(metric, value, target, unit[, note])`."""
        row = item if isinstance(item, Row) else cls(*item)
        row.benchmark = row.benchmark or benchmark
        return row


def discover() -> Dict[str, str]:
    """{short name: module name} of every `benchmarks/bench_*.py`, sorted by name."""
    here = Path(__file__).resolve().parent
    found = {m.name[len(PREFIX):]: f"{__name__}.{m.name}"
             for m in pkgutil.iter_modules([str(here)]) if m.name.startswith(PREFIX)}
    return dict(sorted(found.items()))


def load(name: str) -> ModuleType:
    """Import benchmark `name` (short name `train_step` or module name `bench_train_step`)."""
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    modules = discover()
    if short not in modules:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(modules) or 'none'}")
    return importlib.import_module(modules[short])


def describe(module: ModuleType) -> str:
    """First line of a benchmark module's docstring."""
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def _fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if unit == "ratio":
        return f"{v:.3f}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def format_table(rows: Iterable[Row]) -> str:
    """A plain-text summary table (benchmark, metric, value, target, unit, status)."""
    rows = list(rows)
    head = ("benchmark", "metric", "value", "target", "unit", "status")
    body = [(r.benchmark, r.metric, _fmt(r.value, r.unit),
             "" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + _fmt(r.target, r.unit),
             r.unit, r.status) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line("-" * w for w in widths)] + [line(b) for b in body]
    return "\n".join(out)


def format_markdown(rows: Iterable[Row]) -> str:
    """The summary table as markdown (for the docs' Benchmarks page)."""
    out = ["| benchmark | metric | value | target | status |", "|---|---|---|---|---|"]
    for r in rows:
        unit = "" if r.unit == "ratio" else f" {r.unit}"
        target = "" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + _fmt(r.target, r.unit)
        out.append(f"| {r.benchmark} | {r.metric} | {_fmt(r.value, r.unit)}{unit} | {target} | {r.status} |")
    return "\n".join(out)


__all__ = ["Row", "discover", "load", "describe", "format_table", "format_markdown", "PREFIX"]


def cpu_settings(args, defaults: dict, quick: dict, on_cpu: str) -> dict:
    """A CPU benchmark's settings: `quick` under --quick else `defaults`, with --rounds and
    --warmup applied, after --threads; `on_cpu` (why it runs on the CPU) is printed when
    --device cuda asks otherwise."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        print(f"{on_cpu}; --device cuda is ignored here", flush=True)
    out = dict(quick if args.quick else defaults)
    out["rounds"] = args.rounds or out["rounds"]
    out["warmup"] = out["warmup"] if args.warmup is None else args.warmup
    return out


def torch_device(args) -> str:
    """The device of `--device` (auto: cuda when available) after applying `--threads`."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds `fn()` takes on `device`, synchronised before and after."""
    import time

    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t
