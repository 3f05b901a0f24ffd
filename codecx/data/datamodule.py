"""Image datasets and the Lightning data module (embedded skimage samples or any image folder)."""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from codecx.data.images import ImageReadError, oriented_size, read_rgb, to_rgb8

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SOURCES = ("sample", "folder")

# Colour photographs shipped inside the scikit-image wheel (never fetched through pooch).
# Validation: astronaut (512x512) and coffee (600x400), two natural photos like Kodak images.
SAMPLE_VAL = ("astronaut.png", "coffee.png")
SAMPLE_TRAIN = ("chelsea.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                "motorcycle_right.png", "retina.jpg", "rocket.jpg")

PathLike = str | Path


def skimage_data_dir() -> Path:
    """Directory of the image files bundled inside the installed scikit-image package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("data.source=sample needs scikit-image installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_image_paths() -> tuple[list[Path], list[Path]]:
    """(train, val) paths of the skimage colour photos present on disk; nothing is downloaded."""
    root = skimage_data_dir()
    pick = lambda names: [root / n for n in names if (root / n).is_file()]  # noqa: E731
    return pick(SAMPLE_TRAIN), pick(SAMPLE_VAL)


def list_images(directory: PathLike, name: str = "data.dir") -> list[Path]:
    """Sorted image files under `directory` (recursive, case-insensitive suffixes)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"{name}={directory}: directory not found")
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_image(path: Path, min_size: int | None) -> str | None:
    """Why `path` is unusable (unreadable or smaller than min_size), or None if it is fine."""
    try:
        with Image.open(path) as im:
            w, h = oriented_size(im)
            if min_size is not None and min(w, h) < min_size:
                return f"{w}x{h} px is smaller than {min_size}x{min_size}"
            to_rgb8(im, str(path))  # decodes every pixel: damaged files fail here, not in training
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
        return f"unreadable: {type(e).__name__}: {e}"
    return None


def check_images(source: str = "sample", train_dir: PathLike | None = None,
                 val_dir: PathLike | None = None, crop_size: int | None = 256,
                 val_crop_size: int | None = None) -> None:
    """Pre-flight check of a data config from the image headers only (fast): the folders exist
    and hold images, and some image is large enough for each crop; ValueError naming the
    folder and what to do otherwise."""
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r}: unknown source; valid choices: {', '.join(SOURCES)}")
    if source == "sample":
        train, val = sample_image_paths()
        sets = [("data.sample (train)", train, crop_size), ("data.sample (val)", val, val_crop_size)]
    else:
        if train_dir is None and val_dir is None:
            raise ValueError("data=folder needs data.train_dir=DIR (and optionally data.val_dir=DIR)")
        sets = []
        if train_dir is not None:
            files = list_images(train_dir, "data.train_dir")
            if val_dir is None and len(files) < 2:
                raise ValueError(f"data.train_dir={train_dir}: found {len(files)} image file(s); need "
                                 "at least 2 to split off validation (or set data.val_dir=DIR)")
            sets.append((f"data.train_dir={train_dir}", files, crop_size))
        if val_dir is not None:
            sets.append((f"data.val_dir={val_dir}", list_images(val_dir, "data.val_dir"), val_crop_size))
    for where, files, crop in sets:
        if not files:
            raise ValueError(f"{where}: no image files (suffixes {'/'.join(sorted(IMAGE_SUFFIXES))})")
        if crop is None:
            continue
        sizes = []
        for p in files:
            try:
                with Image.open(p) as im:
                    sizes.append(min(oriented_size(im)))
            except Exception:  # noqa: BLE001 - unreadable files are skipped (with a warning) later
                continue
        if not sizes:
            raise ValueError(f"{where}: none of the {len(files)} image file(s) can be read")
        if max(sizes) < crop:
            raise ValueError(f"{where}: every image is smaller than the {crop}x{crop} crop (largest "
                             f"short side {max(sizes)} px); lower the crop size (data.crop_size / "
                             "data.val_crop_size) or use larger images")


class ImageFolderDataset(Dataset):
    """RGB images as float (3,H,W) in [0,1]: random crop + h-flip for training, center crop or full image otherwise."""

    def __init__(self, paths_or_dir: PathLike | Sequence[PathLike], crop_size: int | None = 256,
                 train: bool = True, name: str = "data.dir", seed: int | None = None,
                 skip_unreadable: bool | None = None):
        if isinstance(paths_or_dir, (str, Path)):
            where, candidates = f"{name}={paths_or_dir}", list_images(paths_or_dir, name)
        else:
            candidates = [Path(p) for p in paths_or_dir]
            where = f"{name} [{len(candidates)} files]"
        if train and crop_size is None:
            raise ValueError(f"{name}: training needs a crop_size")
        self.crop_size, self.train, self.name = crop_size, train, name
        #: with a seed, the n-th draw of image i gets its crop and flip from its own generator
        #: seeded by (seed, i, n): the data do not depend on what else draws random numbers
        self.seed, self._draws = seed, {}
        #: a file that fails to read later is skipped with a warning (default: in training)
        self.skip_unreadable = train if skip_unreadable is None else bool(skip_unreadable)
        self._broken: set = set()  # files that failed to read after the check (skipped since)
        reasons = {p: _check_image(p, crop_size) for p in candidates}
        self.paths = [p for p, r in reasons.items() if r is None]
        skipped = [f"{p} ({r})" for p, r in reasons.items() if r is not None]
        need = f"readable images of at least {crop_size}x{crop_size} px" if crop_size else "readable images"
        if not self.paths:
            detail = "; ".join(skipped) if skipped else f"no files with suffix {'/'.join(sorted(IMAGE_SUFFIXES))}"
            raise ValueError(f"{where}: no {need}; {detail}")
        if skipped:
            warnings.warn(f"{where}: skipped {len(skipped)} of {len(candidates)} images (need {need}): "
                          + "; ".join(skipped), stacklevel=2)

    def __len__(self) -> int:
        """Number of usable images."""
        return len(self.paths)

    def _read(self, idx: int) -> tuple[int, np.ndarray]:
        """(index, upright 8-bit RGB pixels) of image `idx`. A file that stopped reading since the
        dataset checked it (truncated or gone on a flaky disk): in validation an ImageReadError
        naming it; in training (`skip_unreadable`) one warning naming it, then the next readable
        image instead (the run goes on; the file is skipped from then on)."""
        idx = range(len(self.paths))[idx]  # IndexError past the end (iteration stops there)
        for k in range(len(self.paths)):
            i = (idx + k) % len(self.paths)
            if self.paths[i] in self._broken:
                continue
            try:
                return i, read_rgb(self.paths[i])
            except ImageReadError as e:
                if not self.skip_unreadable:
                    raise
                self._broken.add(self.paths[i])
                warnings.warn(f"{self.name}: skipping an image that can no longer be read ({e}); "
                              f"training goes on without it ({len(self._broken)} of {len(self.paths)} "
                              "skipped so far)", stacklevel=3)
        raise ImageReadError(f"{self.name}: none of the {len(self.paths)} image files can be read any "
                             "more (skipped: " + ", ".join(map(str, sorted(self._broken)[:3])) + ")")

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Load image `idx`, crop (random or center), flip (training) and return a (3,H,W) float tensor."""
        idx, arr = self._read(idx)  # upright, 8-bit RGB
        c, (h, w) = self.crop_size, arr.shape[:2]
        g = None
        if self.train and self.seed is not None:
            k = self._draws[idx] = self._draws.get(idx, -1) + 1
            g = torch.Generator().manual_seed(hash((int(self.seed), int(idx), k)) & 0x7FFFFFFFFFFFFFFF)
        if c is not None:
            if self.train:
                top, left = (int(torch.randint(0, n - c + 1, (), generator=g)) for n in (h, w))
            else:
                top, left = (h - c) // 2, (w - c) // 2
            arr = arr[top : top + c, left : left + c]
        x = torch.from_numpy(np.ascontiguousarray(arr))
        x = x.permute(2, 0, 1).float().div_(255.0)
        if self.train and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        return x.contiguous()


class ImageDataModule(pl.LightningDataModule):
    """Train/val loaders over the embedded skimage photos (source="sample") or image folders (source="folder").

    With source="folder" and no val_dir, validation is a fixed split of train_dir: the last 10%
    of its sorted files (at least one), and training uses the rest.
    """

    def __init__(self, source: str = "sample", train_dir: PathLike | None = None, val_dir: PathLike | None = None,
                 crop_size: int = 256, val_crop_size: int | None = None, batch_size: int = 8,
                 val_batch_size: int = 1, num_workers: int = 0, max_val_images: int | None = None,
                 repeat: int = 1, shuffle: bool = True, augment: bool = True, invert: bool = False,
                 pin_memory: bool | None = None, seed: int | None = None):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r}: unknown source; valid choices: {', '.join(SOURCES)}")
        if source == "folder" and train_dir is None and val_dir is None:
            raise ValueError("data.source=folder needs data.train_dir (and optionally data.val_dir)")
        if val_batch_size > 1 and val_crop_size is None:
            raise ValueError("data.val_batch_size > 1 needs data.val_crop_size (full images differ in size)")
        self.save_hyperparameters()
        self.source, self.train_dir, self.val_dir = source, train_dir, val_dir
        self.crop_size, self.val_crop_size = crop_size, val_crop_size
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.max_val_images, self.repeat = max_val_images, repeat
        self.seed = seed  # data order, crops and flips from their own generators (None: the global RNG)
        self.shuffle, self.augment = shuffle, augment
        self.invert = invert  # inverse training (Rethinking Latent Variable, WACV 2026): training images also as 1 - x
        # page-locked batches for faster host-to-GPU copies (None: when CUDA is available)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.train_set: Dataset | None = None
        self.val_set: ImageFolderDataset | None = None

    def _split(self) -> tuple[list[Path] | PathLike, list[Path] | PathLike, str, str]:
        """(train, val) paths-or-dirs and their config names for messages."""
        if self.source == "sample":
            train, val = sample_image_paths()
            return train, val, "data.sample (train)", "data.sample (val)"
        if self.val_dir is not None:
            return self.train_dir, self.val_dir, "data.train_dir", "data.val_dir"
        if self.train_dir is None:
            raise ValueError("data.source=folder needs data.train_dir")
        files = list_images(self.train_dir, "data.train_dir")
        name = f"data.train_dir={self.train_dir}"
        if len(files) < 2:
            raise ValueError(f"{name}: found {len(files)} image files; need at least 2 to split off "
                             "validation (or set data.val_dir)")
        n_val = max(1, len(files) // 10)
        return files[:-n_val], files[-n_val:], f"{name} (train split)", f"{name} (val split)"

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed for `stage` (checks every image file once)."""
        train, val, train_name, val_name = self._split()
        if stage in (None, "fit") and self.train_set is None:
            ds = ImageFolderDataset(train, self.crop_size, train=self.augment, name=train_name, seed=self.seed,
                                    skip_unreadable=True)
            if self.invert:
                from codecx.data.invert import InvertedDataset

                ds = InvertedDataset(ds)
            reps = max(self.repeat, math.ceil(self.batch_size / len(ds)))
            self.train_set = ConcatDataset([ds] * reps) if reps > 1 else ds
        if stage in (None, "fit", "validate") and self.val_set is None:
            if self.max_val_images is not None:
                val = (list_images(val, val_name) if isinstance(val, (str, Path)) else val)[: self.max_val_images]
            self.val_set = ImageFolderDataset(val, self.val_crop_size, train=False, name=val_name)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of (B,3,crop,crop); incomplete last batch dropped."""
        sampler = None
        if not self.shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning would insert a *shuffling* DistributedSampler; keep the order fixed
            sampler = DistributedSampler(self.train_set, shuffle=False, drop_last=True)
        order = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))
        return DataLoader(self.train_set, batch_size=self.batch_size, drop_last=True, sampler=sampler,
                          shuffle=self.shuffle if sampler is None else None, generator=order,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        """Validation images in a fixed order (full images unless val_crop_size is set)."""
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory)
