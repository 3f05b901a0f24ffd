"""Evaluation from real bitstreams: rebuild codecs from checkpoints, code every image through
the codecx file format, and aggregate CompressAI-layout results (one RD point per checkpoint)."""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from codecx.coding.container import (MAX_PIXELS, ImageTooLargeError, check_encode,
                                     codec_fingerprint)
from codecx.lit.module import resize_cdf_buffers
from codecx.metrics.rd import WEIGHTED, aggregate, code_image, to_uint8
from codecx.models.build import build_codec, non_finite_tensors
from codecx.models.codec import Codec
from codecx.models.shallow import restore_legacy_slope

BPP_SOURCE = "codecx file: header, streams and CRC"
# per-image columns, in CSV order; `lpips` only with an LPIPS model; `hf_ratio`:
# codecx.metrics.realism.hf_power_ratio (weight-free)
METRICS = ("bpp", "bpp_streams", "bpp_est", "psnr-rgb", "ms-ssim", "lpips", "hf_ratio", "grad_corr",
           "mse_t", "mse_a", "mse_q", "mse_a_ratio", "mse_q_ratio",  # metrics.decompose
           "encoding_time", "decoding_time", "bytes")
# per-point complexity in KMACs/pixel (codecx.metrics.complexity; decoder = h_s + context + g_s)
COMPLEXITY = ("kmacs_g_a", "kmacs_h_a", "kmacs_h_s", "kmacs_context", "kmacs_g_s", "kmacs_decoder",
              "kmacs_encoder")

Image = Tuple[str, Tensor]


class CheckpointError(ValueError):
    """A checkpoint path that does not hold a codecx training checkpoint."""


def set_coding_threads(n: Optional[int] = None) -> int:
    """Use `n` torch threads, by default the idle cores (cores this process may use minus the
    1-minute load average, at least 1); returns the number. Extra threads on busy cores make
    the many small tensor ops of entropy coding wait on each other (50x slower measured on a
    loaded 2-core machine). Encoder and decoder must compute bit-identical entropy parameters:
    keep the setting equal on both sides when in doubt."""
    if not n:
        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = min(avail, round(avail - load))
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


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


def prepare(codec: Codec) -> Codec:
    """A codec ready to code: CPU, eval mode, CDF tables built (`update(force=True)`)."""
    codec = codec.cpu().eval()
    codec.update(force=True)
    return codec


def codec_from_config(model: Mapping, quantizer: Optional[Mapping] = None,
                      shift: Optional[Mapping] = None, **rest) -> Codec:
    """A codec from plain `model` / `quantizer` / `shift` config dicts (each one `_target_` node;
    no `shift`: no latent shift); `rest`: `transform`, `refine`, `lmbda` (codecx.models.build_codec)."""
    return build_codec({"model": model, "quantizer": quantizer, "shift": shift, **rest})


def load_codec(ckpt_path: str | os.PathLike, quantizer_override: Optional[Mapping] = None,
               shift: Optional[Mapping] = None, scale_levels: Optional[int] = None,
               refine: Optional[Mapping] = None) -> Tuple[Codec, Dict[str, Any]]:
    """(codec ready to code, its config) from a train.py checkpoint's `codecx_config` and weights;
    `quantizer_override` (a `_target_` dict) replaces the trained quantizer, `shift` (a
    `_target_` dict of codecx.inference.latent_shift.LatentShift) adds a latent shift,
    `scale_levels` replaces the model's scale table size (64: CompressAI's CDF tables),
    `refine` (a multi-select `refine` node) replaces the encoder refiners."""
    ckpt = load_checkpoint(ckpt_path)
    config = dict(ckpt["codecx_config"])
    config["model"] = dict(config["model"], weights=None)  # the checkpoint holds the weights
    if scale_levels is not None:
        config["model"]["scale_levels"] = int(scale_levels)
    if quantizer_override:
        config["quantizer"] = dict(quantizer_override)
    config.pop("shift", None)
    if shift:
        config["shift"] = dict(shift)
    if refine is not None:
        config["refine"] = dict(refine)
    codec = build_codec(config)
    restore_legacy_slope(codec.backbone, config["model"])  # a CNN analysis trained with slope 0.01
    state = {k[len("codec."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("codec.")}
    bad = non_finite_tensors(state)
    if bad:  # NaN weights make NaN latents (which the rANS coder cannot code) or NaN images
        raise CheckpointError(f"checkpoint {ckpt_path}: parameters are not finite (NaN/Inf in "
                              f"{', '.join('codec.' + b for b in bad)}); it holds a diverged or damaged "
                              "model: use an earlier checkpoint (last.prev.ckpt, best.ckpt, step=K.ckpt)")
    if quantizer_override:  # the new quantizer keeps its own state (if any)
        own = codec.quantizer.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("quantizer.")}
        state.update({f"quantizer.{k}": v for k, v in own.items()})
    resize_cdf_buffers(codec, state)
    try:
        codec.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt_path}: weights do not fit its own config "
                              f"({config['model']}):\n{e}") from None
    return prepare(codec), config


def fingerprint_of(codec: Codec, config: Mapping[str, Any]) -> bytes:
    """The container fingerprint: model, quantizer and shift config (no weights path) + all state."""
    model = {k: v for k, v in dict(config["model"]).items() if k != "weights"}
    parts = {"model": model, "quantizer": dict(config["quantizer"])}
    if config.get("shift"):  # the decoder needs the same candidate steps
        parts["shift"] = dict(config["shift"])
    if config.get("transform"):  # and the same latent transforms
        parts["transform"] = dict(config["transform"])
    return codec_fingerprint(codec, parts)


def dataset_images(dataset, max_images: Optional[int] = None,
                   max_pixels: Optional[int] = None) -> List[Image]:
    """(file name, (1,3,H,W) image) pairs of an ImageFolderDataset (or any indexable dataset).
    `max_pixels`: full images larger than that (told by the file header) are not loaded; one
    warning names them (the encoder would refuse them: `check_encode`)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    paths = getattr(dataset, "paths", None)
    keep, large = list(range(n)), []
    if max_pixels is not None and paths and getattr(dataset, "crop_size", None) is None:
        from PIL import Image as PILImage

        from codecx.data.images import oriented_size

        keep = []
        for i in range(n):
            try:
                with warnings.catch_warnings():  # DecompressionBombWarning: max_pixels decides
                    warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                    with PILImage.open(paths[i]) as im:
                        w, h = oriented_size(im)
            except Exception:  # noqa: BLE001 - unreadable: the dataset's own error names it
                w = h = 0
            if w * h > max_pixels:
                large.append(f"{Path(paths[i]).name} ({w}x{h})")
            else:
                keep.append(i)
        if large:
            warnings.warn(f"skipped {len(large)} image(s) larger than the encoder's cap of {max_pixels} "
                          f"pixels (max_pixels=N raises it): {', '.join(large)}", stacklevel=2)
    return [(Path(paths[i]).name if paths else f"image{i:04d}", dataset[i].unsqueeze(0))
            for i in keep]


@torch.no_grad()
def skip_small_images(images: List[Image], stride: int) -> List[Image]:
    """The images at least `stride` px on each side; the others are dropped with one warning
    naming them (a 1x1 image costs ~500 bpp of header and padding and would dominate a mean)."""
    keep = [(n, x) for n, x in images if min(x.shape[-2:]) >= stride]
    small = [f"{n} ({x.shape[-1]}x{x.shape[-2]})" for n, x in images if min(x.shape[-2:]) < stride]
    if small:
        warnings.warn(f"skipped {len(small)} image(s) smaller than the model's stride ({stride} px): "
                      + ", ".join(small), stacklevel=3)
    if not keep:
        raise ValueError(f"no image of at least {stride}x{stride} px to evaluate (skipped: "
                         f"{', '.join(small)})")
    return keep


def skip_unencodable_images(images: List[Image], backbone, max_pixels: int = MAX_PIXELS) -> List[Image]:
    """The images the encoder can take (`check_encode`: pixel cap, free memory); the others are
    dropped with one warning naming each and why (the evaluation of the others goes on)."""
    keep, refused = [], []
    for name, x in images:
        try:
            check_encode(backbone, tuple(x.shape[-2:]), name, max_pixels)
            keep.append((name, x))
        except ImageTooLargeError as e:
            refused.append(str(e))
    if refused:
        warnings.warn(f"skipped {len(refused)} image(s) the encoder refuses: " + "; ".join(refused),
                      stacklevel=3)
    if not keep:
        raise ValueError("no image can be encoded: " + "; ".join(refused))
    return keep


def evaluate(codec: Codec, images: Iterable[Image], fingerprint: bytes, lpips=None, fid=None,
             progress: bool = True, description: str = "coding",
             on_image: Optional[Callable[[str, Tensor, Tensor], None]] = None,
             grad_corr: Optional[bool] = None, decompose: bool = False,
             max_pixels: int = MAX_PIXELS) -> List[Dict[str, Any]]:
    """Per-image rows: each image goes through a real codecx file (`encode_image` then
    `decode_image`); `bpp` counts the whole file, header included. LPIPS (Zhang et al. 2018)
    per image with `lpips`; `fid` (FIDKID) accumulates patches, read it with `summarize`;
    `on_image(name, x, x_hat)` sees every decoded image. `grad_corr` (None: when the codec
    shifts its latents) adds the correlation of grad -log p and grad D w.r.t. y_hat (arXiv 2501.01231
    fig. 6). `decompose` adds MSE_t / MSE_a / MSE_q and their ratios (Rethinking Latent Variable, WACV 2026, eq. 11).
    Images smaller than the stride, or that the encoder refuses (over `max_pixels`, or more
    memory than is free), are skipped with a warning."""
    from codecx.inference.latent_shift import shift_gradient_correlation
    from codecx.metrics.decompose import decompose as decompose_error
    from codecx.metrics.realism import hf_power_ratio

    from rich.console import Console
    from rich.progress import track

    images = skip_small_images(list(images), int(getattr(codec.backbone, "stride", 1)))
    images = skip_unencodable_images(images, codec.backbone, max_pixels)
    if grad_corr is None:
        grad_corr = codec.shift is not None
    console = Console(stderr=True)
    rows = []
    for name, x in track(images, description=description, transient=True, console=console,
                         disable=not (progress and console.is_terminal)):
        row, x_hat = code_image(codec, x, fingerprint, max_pixels)
        for r in codec.refiners:  # what each refiner did to this image (e.g. SGA's kept latents)
            row.update(r.report())
        if lpips is not None:
            row["lpips"] = lpips(x, to_uint8(x_hat) / 255).mean().item()  # the 8-bit image, as PSNR
        row["hf_ratio"] = hf_power_ratio(x, to_uint8(x_hat) / 255).item()  # needs no weights
        if grad_corr:
            row["grad_corr"] = shift_gradient_correlation(codec, x)
        if decompose:
            row.update(decompose_error(codec, x, x_hat))
        if fid is not None:
            fid.update(x, x_hat)
        if on_image is not None:
            on_image(name, x, x_hat)
        rows.append({"image": name, "height": x.shape[-2], "width": x.shape[-1], **row})
    return rows


def evaluate_codecs(codecs: Iterable[Tuple[str, Codec, Mapping[str, Any]]], images: Sequence[Image],
                    lpips=None, fid=None, progress: bool = True, grad_corr: Optional[bool] = None,
                    decompose: bool = False, max_pixels: int = MAX_PIXELS
                    ) -> Tuple[List[Dict[str, float]], List[Dict[str, Any]]]:
    """(one RD point per codec, per-image rows) for (label, codec, config) triples, e.g. from
    `load_codec`, each coded with its own fingerprint; points and rows carry `checkpoint`
    (the label), points also `model` and `lmbda` (None for a CompressAI state dict)."""
    points, rows = [], []
    for label, codec, config in codecs:
        r = evaluate(codec, images, fingerprint_of(codec, config), lpips, fid, progress,
                     description=Path(label).name, grad_corr=grad_corr, decompose=decompose,
                     max_pixels=max_pixels)
        points.append({**summarize(r, fid), **_complexity(codec), "checkpoint": label,
                       "model": config["model"]["name"],
                       "lmbda": config.get("lmbda")})
        rows += [{"checkpoint": label, **row} for row in r]
    return points, rows


def _complexity(codec: Codec) -> Dict[str, float]:
    """KMACs/pixel of each backbone stage (codecx.metrics.complexity; results' `kmacs_*`)."""
    from codecx.metrics.complexity import results_columns

    return results_columns(codec.backbone)


def summarize(rows: Sequence[Mapping[str, Any]], fid=None) -> Dict[str, float]:
    """One RD point: the mean of every metric over the images (MS-SSIM over the images large
    enough for it), the pixel-weighted aggregates `bpp_weighted` / `psnr-rgb_weighted` (total
    bits / total pixels; PSNR of the pooled MSE) (+ FID/KID from `fid`)."""
    if not rows:
        raise ValueError("no images were evaluated")
    point = aggregate(rows, [k for k in METRICS if k in rows[0]])
    if fid is not None:
        try:
            point.update(fid.compute())
        except ValueError as e:
            warnings.warn(f"FID/KID skipped: {e}", stacklevel=2)
        fid.reset()
    return point


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
                 **extra: Any) -> Dict[str, Any]:
    """CompressAI's results layout: `results[metric]` lists one value per point (checkpoint),
    so a rate sweep is one RD curve; non-finite values (MS-SSIM of small images) become null."""
    keys = [k for k in (*METRICS, *WEIGHTED, "fid", "kid", "kid_std", *COMPLEXITY)
            if k != "bytes" and k in points[0]]
    results = {k: [_json_number(float(p[k])) for p in points] for k in keys}
    if "kmacs_decoder" in points[0]:
        from codecx.metrics.complexity import COUNTER

        extra.setdefault("complexity", {"unit": "KMACs/pixel", "counter": COUNTER, "input": [256, 256],
                                        "keys": [k for k in COMPLEXITY if k in points[0]]})
    return {"name": name, "description": description, "bpp_source": BPP_SOURCE, **extra,
            "results": results}


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


def summary_table(results: Mapping[str, Any], labels: Sequence[str] = ()):
    """A rich Table of a results dict: one row per RD point."""
    from rich.table import Table

    res = results["results"]
    cols = [("bpp", "bpp", 4), ("bpp_streams", "bpp streams", 4), ("bpp_est", "bpp est.", 4),
            ("psnr-rgb", "PSNR dB", 2), ("ms-ssim", "MS-SSIM", 4), ("lpips", "LPIPS", 4),
            ("hf_ratio", "HF ratio", 3),
            ("grad_corr", "grad corr", 3), ("mse_a_ratio", "MSE_a/t", 3), ("mse_q_ratio", "MSE_q/t", 3),
            ("fid", "FID", 2), ("kid", "KID", 4), ("encoding_time", "enc s", 3),
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
