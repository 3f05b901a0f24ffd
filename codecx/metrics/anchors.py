"""Packaged CompressAI Kodak anchor curves (codecx/data/anchors/<zoo-name>.json)."""
from __future__ import annotations

from typing import Any, Dict

from codecx.metrics.bdrate import anchor_path, list_anchors, load_results  # noqa: F401 - the lookup lives there


def load_anchor(name: str) -> dict:
    """Load a packaged anchor as a CompressAI-layout results dict."""
    return load_results(anchor_path(name))


# ---------------------------------------------------------------- classical codecs (Pillow)
# Quality settings: dense at the low end, where learned codecs trained briefly sit.
CLASSICAL = {"jpeg": ("JPEG", (1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)),
             "webp": ("WEBP", (0, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)),
             # AVIF: Pillow >= 11.3 built with libavif (features.check("avif")); 4:2:0, its default speed
             "avif": ("AVIF", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95))}


def classical_anchor(images, codec: str = "jpeg", qualities=None, msssim: bool = True) -> dict:
    """An RD curve of JPEG or WebP (Pillow, its default settings, one file per image and quality)
    on `images` ((name, (1,3,H,W) tensor in [0,1]) pairs): per quality, the mean over the images
    of bpp (8 * file bytes / pixels), PSNR and MS-SSIM of the decoded 8-bit image (as codecx's
    own evaluation), in CompressAI's results layout; settings that do not improve both rate
    and PSNR over a cheaper one are left out, so that the curve is strictly increasing."""
    import io

    import numpy as np
    import torch
    from PIL import Image, features

    from codecx.metrics.rd import msssim_uint8, psnr_uint8

    if codec not in CLASSICAL:
        raise ValueError(f"unknown classical anchor {codec!r}; choose one of {', '.join(CLASSICAL)}")
    fmt, default_q = CLASSICAL[codec]
    if fmt in ("WEBP", "AVIF") and not features.check(codec):
        raise RuntimeError(f"the {codec} anchor needs Pillow built with {fmt} support "
                           f"(PIL.features.check({codec!r}) is False)")
    images = list(images)
    if not images:
        raise ValueError(f"the {codec} anchor needs at least one image")
    pts = []
    for q in qualities or default_q:
        bpp, psnr, ms_ssim = [], [], []
        for _, x in images:
            x = x.detach().float().cpu()
            x = x if x.dim() == 4 else x.unsqueeze(0)
            arr = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format=fmt, quality=int(q))
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            x_hat = torch.from_numpy(dec.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255
            bpp.append(8 * buf.tell() / (arr.shape[0] * arr.shape[1]))
            psnr.append(psnr_uint8(x, x_hat))
            ms_ssim.append(msssim_uint8(x, x_hat) if msssim else float("nan"))
        pts.append((int(q), float(np.mean(bpp)), float(np.mean(psnr)), float(np.mean(ms_ssim))))
    # a curve: settings that give no more rate and PSNR than a cheaper one are dropped (at the
    # lowest qualities small images often give the same file)
    pts.sort(key=lambda p: (p[1], -p[2]))
    front = []
    for p in pts:
        if not front or (p[1] > front[-1][1] and p[2] > front[-1][2]):
            front.append(p)
    pts = front
    names = ", ".join(n for n, _ in images[:4]) + (", ..." if len(images) > 4 else "")
    return {"name": codec, "description": f"Pillow {fmt} at qualities {[p[0] for p in pts]} on "
                                          f"{len(images)} image(s) ({names})",
            "bpp_source": f"{fmt} file bytes",
            "results": {"quality": [p[0] for p in pts], "bpp": [p[1] for p in pts],
                        "psnr-rgb": [p[2] for p in pts],
                        "ms-ssim": [None if p[3] != p[3] else p[3] for p in pts]}}


def dense_qualities(codec: str) -> range:
    """The dense quality sweep of `codec` that classical_at interpolates in: JPEG every quality, the others every 2."""
    return range(1, 101) if codec == "jpeg" else range(0, 101, 2)


def classical_at(images, bpp: float, codec: str = "jpeg") -> Dict[str, Any]:
    """`codec` (Pillow JPEG / WebP) on `images` at the mean rate `bpp`: the PSNR interpolated
    (linear in log bpp) between the two qualities of a dense sweep whose mean bpp bracket it, and
    those qualities. Always `lowest` = (bpp, PSNR) of the codec's lowest quality; when `bpp` is
    outside the rates the codec reaches on these images, `psnr` is None and `below` says which side."""
    import math

    r = classical_anchor(images, codec, qualities=dense_qualities(codec), msssim=False)["results"]
    rates, psnrs, qualities = r["bpp"], r["psnr-rgb"], r["quality"]
    lowest = (rates[0], psnrs[0]) if rates else None
    if not rates or not rates[0] <= bpp <= rates[-1]:
        return {"psnr": None, "quality": None, "bpp": bpp, "below": bool(rates) and bpp < rates[0],
                "lowest": lowest}
    i = max(j for j in range(len(rates)) if rates[j] <= bpp)
    if i == len(rates) - 1:
        return {"psnr": psnrs[i], "quality": (qualities[i], qualities[i]), "bpp": rates[i], "lowest": lowest}
    t = (math.log(bpp) - math.log(rates[i])) / (math.log(rates[i + 1]) - math.log(rates[i]))
    return {"psnr": psnrs[i] + t * (psnrs[i + 1] - psnrs[i]), "quality": (qualities[i], qualities[i + 1]),
            "bpp": bpp, "lowest": lowest}


def resolve_anchor(spec, images=None) -> dict:
    """An anchor curve from config: 'jpeg' / 'webp' (computed on `images`), a packaged CompressAI
    curve name, a results JSON path, or an already-loaded results dict."""
    if isinstance(spec, str) and spec.lower() in CLASSICAL:
        if images is None:
            raise ValueError(f"anchor {spec!r} is computed on the evaluation images: pass them")
        return classical_anchor(images, spec.lower())
    try:
        return load_results(spec)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"anchor {spec!r} is neither a results JSON file, nor a packaged CompressAI curve "
            f"({', '.join(list_anchors())}), nor one of {', '.join(CLASSICAL)}") from None
