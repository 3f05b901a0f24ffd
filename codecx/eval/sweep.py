"""Hydra callback: when a multirun ends, the `codecx report` of the sweep (BD-rate / BD-PSNR of
every group against the baseline group and the anchor, Bjøntegaard VCEG-M33) is written into
the sweep directory and, with `logger=wandb`, logged as one summary run in the sweep's group;
with `logger=tensorboard`, as the run `tb/report` of the sweep directory."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from codecx.eval.results import job_failure, sweep_failures

log = logging.getLogger("codecx")

#: (job folder name, reason) of the failed jobs of the last multirun that ended in this process,
#: and how many jobs it had (train.py's main exits 1 when any failed)
FAILED_JOBS: List[Tuple[str, str]] = []
SWEEP_JOBS: List[int] = [0]


class SweepReport(Callback):
    """`on_multirun_end`: `codecx.eval.report.build_report` on `hydra.sweep.dir` with the options of
    `sweep_report:` (enabled, baseline, data_val_dir, anchor, replicates). Never fails the
    sweep: a report that cannot be built is one warning line. Failed jobs (a job that stops
    with an error records why in its folder and the sweep goes on) are named on the console,
    in FAILED_JOBS (train.py then exits 1) and in the report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        FAILED_JOBS[:] = sweep_failures(sweep_dir) if sweep_dir.is_dir() else []
        SWEEP_JOBS[0] = len(list(sweep_dir.rglob(".hydra/overrides.yaml"))) if sweep_dir.is_dir() else 0
        for name, reason in FAILED_JOBS:
            print(f"codecx: sweep job {name} failed: {reason}")
        opts = _options(config)
        if not opts.get("enabled", False):
            return
        try:
            paths = write_sweep_report(sweep_dir, opts)
        except Exception as e:  # noqa: BLE001 - the runs are done; the report must not fail them
            log.warning("codecx: sweep report of %s not written: %s: %s (run `codecx report %s "
                        "--baseline %s` by hand)", sweep_dir, type(e).__name__, e, sweep_dir,
                        opts.get("baseline") or "KEY=VALUE")
            return
        print(f"codecx: sweep report: {paths['md']}")
        logger = _logger_config(config)
        if "wandb" in str(logger.get("_target_", "")):
            try:
                run_dir = log_wandb_summary(sweep_dir, paths, logger)
                print(f"codecx: sweep summary run in W&B group {wandb_group(sweep_dir, logger)}: {run_dir}")
            except Exception as e:  # noqa: BLE001
                log.warning("codecx: sweep summary not logged to W&B: %s: %s", type(e).__name__, e)
        elif "TensorBoardLogger" in str(logger.get("_target_", "")):
            try:
                print(f"codecx: sweep summary for TensorBoard: {log_tensorboard_summary(sweep_dir, paths)}")
            except Exception as e:  # noqa: BLE001
                log.warning("codecx: sweep summary not logged to TensorBoard: %s: %s", type(e).__name__, e)


def _options(config: DictConfig) -> Dict[str, Any]:
    node = config.get("sweep_report")
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _logger_config(config: DictConfig) -> Dict[str, Any]:
    """The logger node's values that resolve outside a job (`save_dir` names a job's output dir:
    skipped, the summary run writes under the sweep directory)."""
    node = config.get("logger")
    if not isinstance(node, DictConfig):
        return {}
    out = {}
    for k in node.keys():
        try:
            out[str(k)] = node[k]
        except Exception:  # noqa: BLE001 - ${hydra:runtime.output_dir} and the like
            continue
    return out


def write_sweep_report(sweep_dir: Path, opts: Dict[str, Any]) -> Dict[str, Path]:
    """report.md / report.csv / rd.png of the sweep, in `sweep_dir` (see codecx.eval.report)."""
    from codecx.eval.report import build_report
    from codecx.eval.runs import find_runs

    if not opts.get("data_val_dir"):  # reuse only: runs still training (another multirun) wait
        pending = [r.dir.name for r in find_runs(sweep_dir) if not _final(r.dir) and not job_failure(r.dir)]
        if pending:
            raise RuntimeError(f"{len(pending)} run(s) have no final evaluation yet (still training in "
                               "another multirun, stopped early, or eval.write_results=false / "
                               "eval.final_max_images set): "
                               f"{', '.join(pending[:3])}")
    baseline = opts.get("baseline")
    if baseline and "=" not in baseline:  # reg:none (a Hydra override value cannot hold '=' unquoted)
        baseline = baseline.replace(":", "=")
    return build_report(sweep_dir, baseline, data_val_dir=opts.get("data_val_dir"),
                        eval_dir=sweep_dir / "report_eval" if opts.get("data_val_dir") else None,
                        progress=False, replicates=opts.get("replicates"), anchor=opts.get("anchor"))


def _final(run_dir: Path) -> bool:
    """Whether a run ended with its final evaluation: results.json no older than last.ckpt, or
    written at last.ckpt's step."""
    res, ckpt = run_dir / "results.json", run_dir / "checkpoints" / "last.ckpt"
    if not res.is_file():
        return False
    if not ckpt.is_file() or res.stat().st_mtime >= ckpt.stat().st_mtime:
        return True
    from codecx.eval.checkpoint import checkpoint_step

    try:
        return json.loads(res.read_text()).get("step") == checkpoint_step(ckpt) >= 0
    except ValueError:
        return False


def wandb_group(sweep_dir: Path, logger: Dict[str, Any]) -> str:
    """The sweep's W&B group: `logger.group` when set, else the sweep directory's name."""
    return str(logger.get("group") or sweep_dir.name)


#: the report's figures (build_report's paths) -> their key in a W&B / TensorBoard summary
FIGURES = {"png": "rd_plot", "delta": "delta_psnr", "bars": "bd_rate", "rdc": "rdc", "decomposition": "decomposition"}


def bd_figures(rows: List[Dict[str, str]]) -> Dict[Tuple[str, str], float]:
    """{(group, column): value} of the report's BD columns (report.csv rows; means, not the
    per-seed lists), the cells that hold a number."""
    out = {}
    for r in rows:
        group = r["group"].replace(" (baseline)", "")
        for k, v in r.items():
            if (k.startswith("bd_") or k.startswith("anchor_bd")) and not k.endswith("_each"):
                try:
                    out[group, k] = float(v)
                except (TypeError, ValueError):
                    continue
    return out


def log_tensorboard_summary(sweep_dir: Path, paths: Dict[str, Path]) -> Path:
    """The report as a TensorBoard run `tb/report` in the sweep directory (beside each job's
    `tb`): report.md as text, the figures as images (rd_plot, delta_psnr, bd_rate, ...), and each
    group's BD figures as scalars `report/<group>/<column>`; returns its folder."""
    from torch.utils.tensorboard import SummaryWriter

    from codecx.lit.loggers import png_array

    out = sweep_dir / "tb" / "report"
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    writer = SummaryWriter(log_dir=str(out))
    try:
        writer.add_text("report/report_md", paths["md"].read_text(), 0)
        for k, key in FIGURES.items():
            if k in paths:
                writer.add_image(f"report/{key}", png_array(paths[k]), 0, dataformats="HWC")
        for (group, k), v in bd_figures(rows).items():
            writer.add_scalar(f"report/{group}/{k}", v, 0)
    finally:
        writer.close()
    return out


def log_wandb_summary(sweep_dir: Path, paths: Dict[str, Path], logger: Dict[str, Any]) -> Optional[str]:
    """One W&B run (job type `report`, in the sweep's group, files under `sweep_dir`): the report
    table, the RD plot, and each group's BD figures in the run summary. Offline without
    credentials (logger.mode=auto), as the training runs."""
    import wandb

    from codecx.lit.loggers import wandb_has_credentials

    mode = logger.get("mode", "auto")
    if mode == "auto":
        mode = "online" if wandb_has_credentials() and os.environ.get("WANDB_MODE") != "offline" else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    group = wandb_group(sweep_dir, logger)
    run = wandb.init(project=logger.get("project", "codecx"), entity=logger.get("entity"), group=group,
                     job_type="report", name=f"{group}/report", dir=str(sweep_dir), mode=mode,
                     config={"sweep_dir": str(sweep_dir)}, reinit="create_new")
    try:
        run.log({"report/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
                 **{f"report/{key}": wandb.Image(str(paths[k])) for k, key in FIGURES.items() if k in paths}})
        for (group_label, k), v in bd_figures(rows).items():  # summary["reg=cse,alpha=1/bd_rate_pchip"] = 3.77
            run.summary[f"{group_label}/{k}"] = v
        run.summary["report_md"] = paths["md"].read_text()
        return str(Path(run.dir).parent)
    finally:
        run.finish()
