"""`python eval.py`: real-bitstream RD evaluation of train.py checkpoints or a CompressAI state dict."""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from codecx.conf import CONF_DIR
from codecx.config import ConfigError, check_targets, main_with_precheck, register_configs
from codecx.eval.code import set_coding_threads
from codecx.eval.load import codec_from_config, load_codec, prepare
from codecx.eval.loop import dataset_images, evaluate_codecs
from codecx.eval.results import data_label, rd_results, summary_table, write_results
from codecx.metrics.weights import MissingWeightsError
from codecx.models.build import DEFAULT_QUANTIZER
from codecx.models.codec import Codec
from codecx.transforms.base import declared

register_configs()


def warn(message: str) -> None:
    """One warning line on stderr (the evaluation goes on)."""
    print(f"codecx eval: warning: {message}", file=sys.stderr)


def checkpoint_paths(spec: Any) -> List[Path]:
    """Checkpoint files of `ckpt=`: a path, a run dir (its checkpoints/last.ckpt), a glob, or a list."""
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    paths: List[Path] = []
    for item in map(str, items):
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise ConfigError(f"ckpt={item}: the pattern matches no file")
        for m in map(Path, matches):
            paths.append(m / "checkpoints" / "last.ckpt" if m.is_dir() else m)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"ckpt: no such checkpoint file(s): {', '.join(missing)}")
    return paths


def codecs(cfg: DictConfig) -> Iterator[Tuple[str, Codec, Dict[str, Any]]]:
    """(label, codec, config) for each checkpoint, or the one model of `model=` (built lazily)."""
    quantizer = OmegaConf.to_container(cfg.quantizer, resolve=True) or None
    transform = decode_time_transforms(cfg)
    refine = OmegaConf.to_container(cfg.refine, resolve=True) or None
    levels = {} if cfg.scale_levels is None else {"scale_levels": int(cfg.scale_levels)}
    if cfg.ckpt is not None:
        for p in checkpoint_paths(cfg.ckpt):
            codec, config = load_codec(p, quantizer, transform, refine=refine, **levels)
            yield str(p), codec, config
        return
    model = {**OmegaConf.to_container(cfg.model, resolve=True), **levels}
    if not model.get("weights"):
        warn("model.weights is not set: evaluating an untrained (randomly initialised) model")
    quantizer = quantizer or dict(DEFAULT_QUANTIZER)
    config = {"model": model, "quantizer": quantizer, **({"transform": transform} if transform else {}),
              **({"refine": refine} if refine else {})}
    yield (model.get("weights") or "untrained", prepare(codec_from_config(model, quantizer, transform, refine=refine)),
           config)


def decode_time_transforms(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """The latent transforms `transform=[...]` adds after the checkpoint's, `shift=NAME` (a
    preset of the transform latent_shift) first; None: none."""
    nodes: Dict[str, Any] = {}
    for group in ("shift", "transform"):
        node = cfg.get(group)
        node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
        twice = sorted(set(nodes) & set(node))
        if twice:
            raise ConfigError(f"transform {', '.join(twice)} is named twice (shift=NAME is a preset of "
                              "transform=[latent_shift]): give one of them")
        nodes.update(node)
    return nodes or None


def point_label(point: Dict[str, Any]) -> str:
    """Short name of an RD point for tables: 'mbt_mean λ=0.0067 last.ckpt' or the file name."""
    name = Path(point["checkpoint"]).name
    return f"{point['model']} λ={point['lmbda']} {name}" if point.get("lmbda") is not None else name


def build_metrics(cfg: DictConfig) -> Tuple[Optional[Any], Optional[Any]]:
    """(LPIPS, FIDKID) as enabled; missing weights give a warning that says what to put where."""
    lpips = fid = None
    m = cfg.metrics
    try:
        if m.lpips.enabled:
            from codecx.metrics.lpips import LPIPSMetric

            lpips = LPIPSMetric(net=m.lpips.net, weights=m.lpips.weights)
    except MissingWeightsError as e:
        warn(f"LPIPS skipped: {e}")
    try:
        if m.fid.enabled:
            from codecx.metrics.fid import FIDKID

            fid = FIDKID(weights=m.fid.weights, patch=m.fid.patch,
                         kid_subset_size=m.fid.kid_subset_size)
    except MissingWeightsError as e:
        warn(f"FID/KID skipped: {e}")
    return lpips, fid


def validate(cfg: DictConfig) -> None:
    """Checks that need the composed config, before anything is loaded."""
    check_targets(cfg, ["model", "quantizer", "shift", "transform", "refine", "data"])
    if cfg.ckpt is None and cfg.model is None:
        raise ConfigError("nothing to evaluate: set ckpt=PATH (a train.py checkpoint; a list "
                          "ckpt=[a.ckpt,b.ckpt] gives one RD curve) or model=NAME model.N=.. "
                          "model.M=.. model.weights=PATH (a CompressAI state dict)")
    if cfg.ckpt is not None and cfg.model is not None:
        raise ConfigError("ckpt= and model= exclude each other: a checkpoint carries its model "
                          "config (quantizer= may still replace its quantizer)")
    if cfg.data.source == "folder" and cfg.data.val_dir is None:
        raise ConfigError("data=folder needs data.val_dir=DIR (the images to evaluate)")
    if cfg.ckpt is not None:
        checkpoint_paths(cfg.ckpt)


def run(cfg: DictConfig) -> Dict[str, Any]:
    """Evaluate every checkpoint on the data's validation images; write results.json and
    per_image.csv in the Hydra run dir and print a summary table."""
    from rich.console import Console

    validate(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    threads = set_coding_threads(cfg.threads)
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    found = len(datamodule.val_set)
    images = dataset_images(datamodule.val_set, max_pixels=cfg.max_pixels)
    lpips, fid = build_metrics(cfg)
    metrics: List[str] = []  # the summary metrics the codecs' stages declare (codecx.transforms.base.Declares)

    def declaring(items):
        for label, codec, config in items:
            metrics.extend(m for m in declared(codec, "summary_metrics") if m not in metrics)
            yield label, codec, config

    points, rows = evaluate_codecs(declaring(codecs(cfg)), images, lpips, fid, cfg.progress,
                                   grad_corr=cfg.metrics.grad_corr,
                                   decompose=bool(cfg.metrics.get("decompose", False)),
                                   max_pixels=cfg.max_pixels)
    labels = [p["checkpoint"] for p in points]
    data = OmegaConf.to_container(cfg.data, resolve=True)
    name = cfg.name or "+".join(dict.fromkeys(p["model"] for p in points))
    counted = image_count(points, found)
    desc = cfg.description or (f"codecx eval of {len(labels)} model(s) on {counted} "
                               f"({data_label(data)})")
    results = rd_results(name, points, desc, data, metrics)
    js, cs = write_results(out_dir, results, rows)
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(summary_table(results, [point_label(p) for p in points], metrics))
    console.print(f"{counted}, {threads} thread(s); wrote {js} and {cs}")
    return results


def image_count(points: List[Dict[str, Any]], found: int) -> str:
    """'3 image(s)' evaluated per point ('2-3 image(s)' when they differ), and how many of the
    `found` images were skipped (too small, too large: named in the warnings above)."""
    n = sorted({int(p["images"]) for p in points})
    text = f"{n[0]}" + (f"-{n[-1]}" if len(n) > 1 else "") + " image(s)"
    skipped = found - n[0]
    return text + (f" ({skipped} of {found} skipped, see the warnings)" if skipped > 0 else "")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    """One evaluation: configuration, checkpoint and data problems exit 2, other failures
    (e.g. out of memory) exit 1, each with one line (CODECX_DEBUG=1 or HYDRA_FULL_ERROR=1:
    the traceback)."""
    debug = os.environ.get("CODECX_DEBUG") or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as e:  # config, checkpoint and data problems
        if debug:
            raise
        print(f"codecx eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except (RuntimeError, MemoryError, OSError) as e:
        if debug:
            raise
        print(f"codecx eval: error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    """Entry point: check every override first (valid choices and keys), then run Hydra."""
    main_with_precheck(_hydra_main, CONF_DIR, "eval", "codecx eval", validate=validate)


if __name__ == "__main__":
    main()
