"""Results I/O: CompressAI's results layout (results.json, one value per RD point), the per-image
CSV, the summary table, what describes the evaluated images, and the record a failed sweep job
leaves in its folder (job_failed.json)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from codecx.metrics.rd import WEIGHTED

BPP_SOURCE = "codecx file: header, streams and CRC"
# per-image columns, in CSV order; `lpips` only with an LPIPS model; `hf_ratio`:
# codecx.metrics.realism.hf_power_ratio (weight-free)
METRICS = ("bpp", "bpp_streams", "bpp_est", "psnr-rgb", "ms-ssim", "lpips", "hf_ratio", "grad_corr",
           "mse_t", "mse_a", "mse_q", "mse_a_ratio", "mse_q_ratio",  # metrics.decompose
           "encoding_time", "decoding_time", "bytes")
# per-point complexity in KMACs/pixel (codecx.metrics.complexity; decoder = h_s + context + g_s)
COMPLEXITY = ("kmacs_g_a", "kmacs_h_a", "kmacs_h_s", "kmacs_context", "kmacs_g_s", "kmacs_decoder",
              "kmacs_encoder")


def data_key(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields of a data config that decide which images are evaluated (stored in results)."""
    keys = ("source", "val_dir", "train_dir", "val_crop_size", "max_val_images")
    return {k: data.get(k) for k in keys if k != "train_dir" or data.get("val_dir") is None}


def data_label(data: Mapping[str, Any]) -> str:
    """A short description of the evaluated images, e.g. 'folder /data/kodak, full images'."""
    where = data.get("val_dir") or data.get("train_dir") or ""
    crop = data.get("val_crop_size")
    return f"{data.get('source')} {where}".strip() + (f", {crop}-px centre crops" if crop else ", full images")


def _json_number(v: float) -> Optional[float]:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def results_dict(name: str, points: Sequence[Mapping[str, Any]], description: str = "",
                 metrics: Sequence[str] = (), **extra: Any) -> Dict[str, Any]:
    """CompressAI's results layout: `results[metric]` lists one value per point (checkpoint),
    so a rate sweep is one RD curve; non-finite values (MS-SSIM of small images) become null;
    `metrics`: more keys of the points to keep (the summary metrics the codecs' stages declare)."""
    keys = [k for k in dict.fromkeys((*METRICS, *WEIGHTED, "fid", "kid", "kid_std", *COMPLEXITY, *metrics))
            if k != "bytes" and k in points[0]]
    results = {k: [_json_number(float(p[k])) for p in points] for k in keys}
    if "kmacs_decoder" in points[0]:
        from codecx.metrics.complexity import COUNTER

        extra.setdefault("complexity", {"unit": "KMACs/pixel", "counter": COUNTER, "input": [256, 256],
                                        "keys": [k for k in COMPLEXITY if k in points[0]]})
    return {"name": name, "description": description, "bpp_source": BPP_SOURCE, **extra,
            "results": results}


def rd_results(name: str, points: Sequence[Mapping[str, Any]], description: str, data: Mapping[str, Any],
               metrics: Sequence[str] = (), **extra: Any) -> Dict[str, Any]:
    """`results_dict` of RD points that carry `checkpoint`, `lmbda` and `images` (as
    `evaluate_codecs` gives them), with the key of the evaluated images' `data` config; `metrics`
    as `results_dict`; `extra` adds fields or replaces these."""
    fields = {"checkpoints": [p["checkpoint"] for p in points], "lmbda": [p.get("lmbda") for p in points],
              "images": [int(p["images"]) for p in points], "data": data_key(data), **extra}
    return results_dict(name, points, description, metrics, **fields)


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any],
                  rows: Sequence[Mapping[str, Any]]) -> Tuple[Path, Path]:
    """results.json (CompressAI layout) and per_image.csv (one row per checkpoint and image)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, cs = out / "results.json", out / "per_image.csv"
    js.write_text(json.dumps(results, indent=2) + "\n")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with cs.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return js, cs


def summary_table(results: Mapping[str, Any], labels: Sequence[str] = (), metrics: Sequence[str] = ()):
    """A rich Table of a results dict: one row per RD point; `metrics`: more columns (the summary
    metrics the codecs' stages declare, 3 decimals, before FID)."""
    from rich.table import Table

    res = results["results"]
    cols = [("bpp", "bpp", 4), ("bpp_streams", "bpp streams", 4), ("bpp_est", "bpp est.", 4),
            ("psnr-rgb", "PSNR dB", 2), ("ms-ssim", "MS-SSIM", 4), ("lpips", "LPIPS", 4),
            ("hf_ratio", "HF ratio", 3),
            ("grad_corr", "grad corr", 3), ("mse_a_ratio", "MSE_a/t", 3), ("mse_q_ratio", "MSE_q/t", 3),
            *((k, k, 3) for k in metrics if k not in METRICS), ("fid", "FID", 2), ("kid", "KID", 4),
            ("encoding_time", "enc s", 3),
            ("decoding_time", "dec s", 3), ("kmacs_decoder", "dec KMACs/px", 1)]
    cols = [c for c in cols if c[0] in res]
    table = Table(title=f"{results['name']}: bpp from {BPP_SOURCE}")
    table.add_column("point", overflow="fold")
    for _, title, _ in cols:
        table.add_column(title, justify="right")
    for i in range(len(res["bpp"])):
        vals = [res[k][i] for k, _, _ in cols]
        table.add_row(labels[i] if i < len(labels) else str(i),
                      *("n/a" if v is None else f"{v:.{d}f}" for v, (_, _, d) in zip(vals, cols)))
    return table


FAILURE_FILE = "job_failed.json"  # in a sweep job's folder: why the job failed (train.py writes it)


def record_failure(job_dir: Path, reason: str, code: int) -> None:
    """Mark a sweep job as failed (the sweep goes on; its report names the job and `reason`)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / FAILURE_FILE).write_text(json.dumps({"reason": reason, "exit_code": code}) + "\n")


def clear_failure(job_dir: Path) -> None:
    """A job starting again (the same multirun command) is no longer failed."""
    (job_dir / FAILURE_FILE).unlink(missing_ok=True)


def job_failure(job_dir: Path) -> Optional[str]:
    """Why the job in `job_dir` failed, None when it did not."""
    f = job_dir / FAILURE_FILE
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text()).get("reason") or "failed")
    except (ValueError, OSError, AttributeError):
        return "failed (unreadable " + FAILURE_FILE + ")"


def sweep_failures(sweep_dir: Path) -> List[Tuple[str, str]]:
    """(job folder relative to `sweep_dir`, reason) of every failed job below `sweep_dir`."""
    out = []
    for f in sorted(sweep_dir.rglob(FAILURE_FILE)):
        out.append((str(f.parent.relative_to(sweep_dir)), job_failure(f.parent) or "failed"))
    return out
