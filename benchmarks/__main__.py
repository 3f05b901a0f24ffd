"""`python -m benchmarks [--only NAME[,NAME]] [--quick] ...`: run benchmarks, print a summary.

Every `benchmarks/bench_<name>.py` is a benchmark (see `benchmarks/__init__.py`). Each one
measures its baseline in the same run and reports ratios; the summary table at the end lists
every row with its target and `ok` / `MISS`. Exit status: 0, or 1 when a benchmark crashed
(or, with `--strict`, when a target was missed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import List, Optional

from benchmarks import Row, describe, discover, format_markdown, format_table, load


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                   help="run only these benchmarks (short name, e.g. train_step); repeatable")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--quick", action="store_true",
                   help="few steps, one round: a smoke test of the benchmark, not a measurement")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, identical for every variant (default: torch's)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per round (per variant)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured warm-up steps per round")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds (A,B,B,A,...) per variant, to spread machine noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    names = list(discover())
    modules = {}
    for name in names:  # benchmark-specific options
        try:
            modules[name] = load(name)
        except Exception as e:  # noqa: BLE001 - report it, run the others
            modules[name] = e
            continue
        if hasattr(modules[name], "add_arguments"):
            modules[name].add_arguments(parser.add_argument_group(name))
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); "
                         "use --device cpu, or auto (cuda when there is one)")

    if args.list:
        for name, mod in modules.items():
            print(f"{name:20s} {describe(mod) if not isinstance(mod, Exception) else f'(import failed: {mod})'}")
        return 0
    chosen = [n.strip() for group in args.only for n in group.split(",") if n.strip()] or names
    chosen = [n[len("bench_"):] if n.startswith("bench_") else n for n in chosen]
    unknown = [n for n in chosen if n not in modules]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")

    rows: List[Row] = []
    crashed = []
    for name in chosen:
        mod = modules[name]
        print(f"\n=== {name}: {describe(mod) if not isinstance(mod, Exception) else ''}", flush=True)
        t0 = time.perf_counter()
        try:
            if isinstance(mod, Exception):
                raise mod
            rows += [Row.of(r, name) for r in mod.run(args)]
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            crashed.append(name)
            rows.append(Row("crashed", float("nan"), None, "", benchmark=name))
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    print("\nSummary" + (" (--quick: smoke test, not a measurement)" if args.quick else ""))
    print(format_table(rows))
    if args.markdown:
        print("\n" + format_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ | {"status": r.status} for r in rows], f, indent=1)
    missed = [r for r in rows if r.status == "MISS"]
    if crashed:
        return 1
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
