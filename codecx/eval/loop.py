"""The evaluation loop: every image of a set through real codecx files (`evaluate`), one RD point
per codec (`evaluate_codec`, `evaluate_codecs`), CompressAI-layout aggregates (`summarize`)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from codecx.coding.container import MAX_PIXELS, ImageTooLargeError, check_encode
from codecx.eval.code import NO_FINGERPRINT, measure
from codecx.eval.load import fingerprint_of
from codecx.eval.refine import with_refined
from codecx.eval.results import METRICS
from codecx.metrics.rd import aggregate
from codecx.models.codec import Codec
from codecx.transforms.base import declared

Image = Tuple[str, Tensor]


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
             max_pixels: int = MAX_PIXELS, estimate: bool = True,
             channels_last: bool = True) -> List[Dict[str, Any]]:
    """Per-image rows: each image goes through a real codecx file (`encode_image` then
    `decode_image`); `bpp` counts the whole file, header included. LPIPS (Zhang et al. 2018)
    per image with `lpips`; `fid` (FIDKID) accumulates patches, read it with `summarize`;
    `on_image(name, x, x_hat)` sees every decoded image. `grad_corr` (None: when a stage of the
    codec declares it, the latent shift) adds the correlation of grad -log p and grad D w.r.t. y_hat (arXiv 2501.01231
    fig. 6). `decompose` adds MSE_t / MSE_a / MSE_q and their ratios (Rethinking Latent Variable, WACV 2026, eq. 11).
    `estimate` False leaves out `bpp_est` (the likelihoods' rate estimate: for lattice quantizers
    a cell quadrature per symbol); `channels_last` decodes with the channels-last synthesis (`Codec.decompress`; the
    same images, faster where it applies). Images smaller than the stride, or that the encoder
    refuses (over `max_pixels`, or more memory than is free), are skipped with a warning."""
    from rich.console import Console
    from rich.progress import track

    images = skip_small_images(list(images), int(getattr(codec.backbone, "stride", 1)))
    images = skip_unencodable_images(images, codec.backbone, max_pixels)
    if grad_corr is None:  # on when a stage asks for it (the latent shift)
        grad_corr = "grad_corr" in declared(codec, "summary_metrics")
    console = Console(stderr=True)
    rows = []
    # refiners with a batch_size > 1 (refine.sga.batch_size) refine each size's images in groups
    for name, x, refined in track(with_refined(codec, images), total=len(images), description=description,
                                  transient=True, console=console, disable=not (progress and console.is_terminal)):
        row, x_hat = measure(codec, x, fingerprint, lpips, grad_corr, decompose, max_pixels, estimate,
                             channels_last, refined)
        if fid is not None:
            fid.update(x, x_hat)
        if on_image is not None:
            on_image(name, x, x_hat)
        rows.append({"image": name, "height": x.shape[-2], "width": x.shape[-1], **row})
    return rows


def evaluate_codec(codec: Codec, config: Mapping[str, Any], images: Sequence[Image], lpips=None, fid=None,
                   progress: bool = True, description: str = "coding",
                   on_image: Optional[Callable[[str, Tensor, Tensor], None]] = None,
                   grad_corr: Optional[bool] = None, decompose: bool = False, max_pixels: int = MAX_PIXELS,
                   complexity: bool = True, on_fid_error: Optional[Callable[[str], None]] = None,
                   estimate: bool = True, channels_last: bool = True
                   ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """(RD point, per-image rows) of one codec ready to code (`prepare`) on `images` (`evaluate`,
    then `summarize`), coded with the fingerprint of its `config` (none when the config lacks the
    model or the quantizer); `complexity`: the point also gets KMACs/pixel of each stage."""
    fingerprint = fingerprint_of(codec, config) if {"model", "quantizer"} <= set(config) else NO_FINGERPRINT
    rows = evaluate(codec, images, fingerprint, lpips, fid, progress, description=description, on_image=on_image,
                    grad_corr=grad_corr, decompose=decompose, max_pixels=max_pixels, estimate=estimate,
                    channels_last=channels_last)
    point = summarize(rows, fid, on_fid_error, metrics=declared(codec, "summary_metrics"))
    if complexity:
        point.update(_complexity(codec))
    return point, rows


def evaluate_codecs(codecs: Iterable[Tuple[str, Codec, Mapping[str, Any]]], images: Sequence[Image],
                    lpips=None, fid=None, progress: bool = True, grad_corr: Optional[bool] = None,
                    decompose: bool = False, max_pixels: int = MAX_PIXELS, estimate: bool = True,
                    channels_last: bool = True) -> Tuple[List[Dict[str, float]], List[Dict[str, Any]]]:
    """(one RD point per codec, per-image rows) for (label, codec, config) triples, e.g. from
    `load_codec`, each coded with its own fingerprint; points and rows carry `checkpoint`
    (the label), points also `model` and `lmbda` (None for a CompressAI state dict)."""
    points, rows = [], []
    for label, codec, config in codecs:
        point, r = evaluate_codec(codec, config, images, lpips, fid, progress, description=Path(label).name,
                                  grad_corr=grad_corr, decompose=decompose, max_pixels=max_pixels,
                                  estimate=estimate, channels_last=channels_last)
        points.append({**point, "checkpoint": label, "model": config["model"]["name"],
                       "lmbda": config.get("lmbda")})
        rows += [{"checkpoint": label, **row} for row in r]
    return points, rows


def _complexity(codec: Codec) -> Dict[str, float]:
    """KMACs/pixel of each backbone stage (codecx.metrics.complexity; results' `kmacs_*`)."""
    from codecx.metrics.complexity import results_columns

    return results_columns(codec.backbone)


def summarize(rows: Sequence[Mapping[str, Any]], fid=None,
              on_fid_error: Optional[Callable[[str], None]] = None, metrics: Sequence[str] = ()) -> Dict[str, float]:
    """One RD point: the mean of every metric over the images (MS-SSIM over the images large
    enough for it; `metrics`: more columns to average, those the codec's stages declare), the
    pixel-weighted aggregates `bpp_weighted` / `psnr-rgb_weighted` (total bits / total pixels;
    PSNR of the pooled MSE) (+ FID/KID from `fid`; when they cannot be computed,
    `on_fid_error(message)`, by default a warning)."""
    if not rows:
        raise ValueError("no images were evaluated")
    point = aggregate(rows, [k for k in dict.fromkeys((*METRICS, *metrics)) if k in rows[0]])
    if fid is not None:
        try:
            point.update(fid.compute())
        except ValueError as e:
            if on_fid_error is None:
                warnings.warn(f"FID/KID skipped: {e}", stacklevel=2)
            else:
                on_fid_error(f"FID/KID skipped: {e}")
        fid.reset()
    return point
