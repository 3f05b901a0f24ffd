"""Encoder refiners over batches in an evaluation (issue 33): the images of one size are refined
in one call (`refine.sga.batch_size`: SGA optimises every image of the group at once, one pass
on a GPU), then each image is coded on its own with its refined latents (`compress(x,
latents=...)`); per image the same latents as refining it alone (codecx.inference.sga)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["Refined", "refiner_batch_size", "refine_batch", "with_refined"]


@dataclass
class Refined:
    """One image's share of a batched refinement: the latents to code, the refiners' per-image
    columns (`EncoderRefiner.report`), and its share of the refinement's seconds."""

    latents: Tuple[Tensor, Optional[Tensor]]
    report: Dict[str, Any]
    seconds: float


def refiner_batch_size(codec) -> int:
    """How many images of one size the codec's refiners take in one call (`batch_size`; 1: none
    asks for more, images are refined one at a time inside `compress`)."""
    return max((int(r.batch_size) for r in codec.refiners), default=1)


def refine_batch(codec, xs: Sequence[Tensor]) -> List[Refined]:
    """Refine the images `xs` ((1, 3, H, W) each, all of one size) in one call of the codec's
    refiners (`Codec.encoder_latents`); per image its latents, report and time share."""
    sizes = sorted({f"{x.shape[-1]}x{x.shape[-2]}" for x in xs})
    if len(sizes) > 1:
        raise ValueError(f"refining a batch needs images of one size, got {', '.join(sizes)}: group them by "
                         "size first (codecx.eval.refine.with_refined does)")
    t0 = time.perf_counter()
    y, z = codec.encoder_latents(torch.cat(list(xs)))
    share = (time.perf_counter() - t0) / len(xs)
    out = []
    for i in range(len(xs)):
        report: Dict[str, Any] = {}
        for r in codec.refiners:
            report.update(r.report(i))
        out.append(Refined((y[i : i + 1], None if z is None else z[i : i + 1]), report, share))
    return out


def with_refined(codec, images: Sequence[Tuple[str, Tensor]]) -> Iterator[Tuple[str, Tensor, Optional[Refined]]]:
    """`(name, x, refined)` for the images in order; `refined` is None when the refiners take one
    image at a time (`refiner_batch_size` 1: `compress` refines), else the image's share of a group
    refined at once: the image and the next not yet refined images of its size, `batch_size` at
    most (Kodak: its 768x512 and 512x768 images form separate groups)."""
    b = refiner_batch_size(codec)
    if b <= 1:
        for name, x in images:
            yield name, x, None
        return
    ready: Dict[int, Refined] = {}
    for k, (name, x) in enumerate(images):
        if k not in ready:  # a new group: k and the next unrefined images of its size
            later = [j for j in range(k + 1, len(images))
                     if j not in ready and images[j][1].shape[-2:] == x.shape[-2:]]
            group = [k] + later[: b - 1]
            ready.update(zip(group, refine_batch(codec, [images[j][1] for j in group])))
        yield name, x, ready.pop(k)
