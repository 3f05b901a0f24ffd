"""Reading image files as 8-bit RGB, whatever their mode: 16-bit (scaled to 8 bits), palette,
grey, grey+alpha, RGBA (alpha dropped), CMYK, EXIF-rotated photos (turned upright), and the
first frame of an animated image (with a warning)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

# EXIF orientations that swap width and height (rotations by 90 / 270 degrees, transposes)
_SWAPPING = {5, 6, 7, 8}
_ORIENTATION = 0x0112
_ANIMATED_WARNED: set = set()  # animated files already warned about in this process


class ImageReadError(ValueError):
    """An image file that cannot be read as an RGB image (names the file and why)."""


def oriented_size(im: Image.Image) -> Tuple[int, int]:
    """(width, height) of an opened image once its EXIF orientation is applied (header only)."""
    w, h = im.size
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels as stored
        orientation = 1
    return (h, w) if orientation in _SWAPPING else (w, h)


def to_rgb8(im: Image.Image, name: str = "image") -> np.ndarray:
    """An opened PIL image as an (H, W, 3) uint8 array: upright (EXIF), 16-bit modes scaled by
    1/257 (65535 -> 255), palette and grey expanded, alpha dropped, CMYK converted."""
    if getattr(im, "is_animated", False):  # an animated GIF / APNG / WebP: its first frame
        if name not in _ANIMATED_WARNED:  # once per file (it is read at the check and each time after)
            _ANIMATED_WARNED.add(name)
            warnings.warn(f"{name}: an animated image ({getattr(im, 'n_frames', '?')} frames); only its "
                          "first frame is used", stacklevel=2)
        im.seek(0)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels as stored
        pass
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.int64)
        if mode == "I" and (a.min(initial=0) < 0 or a.max(initial=0) > 65535):
            raise ImageReadError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported; "
                                 "convert it to an 8- or 16-bit PNG")
        grey = np.rint(a / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        raise ImageReadError(f"{name}: floating-point pixels (mode F) are not supported; convert it "
                             "to an 8- or 16-bit PNG")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")  # palette transparency, then dropped like any alpha
    if im.mode != "RGB":
        im = im.convert("RGB")   # grey, 1-bit, LA / RGBA (alpha dropped), CMYK, YCbCr, ...
    return np.asarray(im, dtype=np.uint8).copy()


def read_rgb(path: str | Path, box: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """The image file `path` as (H, W, 3) uint8 (`to_rgb8`), optionally cropped to `box`
    (left, top, right, bottom in upright coordinates); ImageReadError if it cannot be read."""
    try:
        with Image.open(path) as im:
            arr = to_rgb8(im, str(path))
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if box is not None:
        left, top, right, bottom = box
        arr = arr[top:bottom, left:right]
    return np.ascontiguousarray(arr)
