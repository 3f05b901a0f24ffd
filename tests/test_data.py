"""Tests for codecx.data: image folder dataset, embedded sample images, data module."""

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from codecx.data import ImageDataModule, ImageFolderDataset, sample_image_paths, skimage_data_dir

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"


def _write(path: Path, w: int = 48, h: int = 40, mode: str = "RGB", seed: int = 0) -> Path:
    """Write a random-noise image of the given size and mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img = img.quantize(16) if mode == "P" else img.convert(mode)
    img.save(path)
    return path


def _folder(root: Path, n: int = 5) -> Path:
    """A folder of n valid RGB PNGs."""
    for i in range(n):
        _write(root / f"img{i:02d}.png", seed=i)
    return root


def test_dataset_shapes_modes_and_ranges(tmp_path):
    _write(tmp_path / "a.png", mode="RGB")
    _write(tmp_path / "sub" / "b.PNG", mode="L")
    _write(tmp_path / "sub" / "c.png", mode="RGBA")
    _write(tmp_path / "d.bmp", mode="P")
    (tmp_path / "notes.txt").write_text("not an image")
    train = ImageFolderDataset(tmp_path, 32, train=True)
    assert [p.name for p in train.paths] == ["a.png", "d.bmp", "b.PNG", "c.png"]
    for x in train:
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    full = ImageFolderDataset(tmp_path, None, train=False)
    assert full[0].shape == (3, 40, 48)
    center = ImageFolderDataset(tmp_path, 32, train=False)[0]
    ref = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1) / 255
    assert torch.allclose(center, ref[:, 4:36, 8:40])


def test_broken_and_small_files_skipped_with_one_warning(tmp_path):
    _folder(tmp_path, 2)
    (tmp_path / "garbage.jpg").write_bytes(b"definitely not a jpeg" * 10)
    good = (tmp_path / "img00.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    _write(tmp_path / "small.png", w=20, h=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(tmp_path, 32, train=True, name="data.train_dir")
    assert [p.name for p in ds.paths] == ["img00.png", "img01.png"]
    assert len(caught) == 1
    msg = str(caught[0].message)
    for bad in ("garbage.jpg", "truncated.png", "small.png", "data.train_dir", "20x60"):
        assert bad in msg


def test_missing_empty_and_unusable_folders_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_dir=.*nope"):
        ImageFolderDataset(tmp_path / "nope", 32, train=True, name="data.train_dir")
    with pytest.raises(ValueError, match="data.train_dir=.*no readable images"):
        ImageFolderDataset(tmp_path, 32, train=True, name="data.train_dir")
    _write(tmp_path / "small.png", w=16, h=16)
    with pytest.raises(ValueError, match=r"at least 32x32 px.*small\.png"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ImageFolderDataset(tmp_path, 32, train=True, name="data.train_dir")


def test_seeding_gives_same_crop_and_flip(tmp_path):
    ds = ImageFolderDataset(_folder(tmp_path, 1), 16, train=True)
    pl.seed_everything(123, verbose=False)
    a = [ds[0] for _ in range(4)]
    pl.seed_everything(123, verbose=False)
    b = [ds[0] for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(a[0], x) for x in a[1:])


def test_sample_source_is_local_and_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    train, val = sample_image_paths()
    root = skimage_data_dir().resolve()
    assert len(train) >= 2 and [p.name for p in val] == ["astronaut.png", "coffee.png"]
    assert all(p.is_file() and p.resolve().is_relative_to(root) for p in train + val)
    assert not set(train) & set(val)
    dm = ImageDataModule(source="sample", crop_size=64, batch_size=2, max_val_images=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every shipped sample image must be usable
        dm.setup("fit")
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 64, 64)
    assert len(dm.val_set) == 1 and dm.val_set[0].shape == (3, 512, 512)


def test_datamodule_folder_split_repeat_and_loaders(tmp_path):
    dm = ImageDataModule(source="folder", train_dir=_folder(tmp_path, 5), crop_size=32, batch_size=8)
    dm.setup("fit")
    assert len(dm.val_set) == 1 and dm.val_set.paths[0].name == "img04.png"
    assert len(dm.train_set) == 8  # 4 training images repeated twice to fill one batch
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0].shape == (8, 3, 32, 32)
    assert next(iter(dm.val_dataloader())).shape == (1, 3, 40, 48)

    dm = ImageDataModule(source="folder", train_dir=tmp_path, val_dir=tmp_path, crop_size=32,
                         batch_size=2, repeat=3, val_crop_size=32, val_batch_size=2)
    dm.setup("fit")
    assert len(dm.train_set) == 15 and len(dm.train_dataloader()) == 7
    assert next(iter(dm.val_dataloader())).shape == (2, 3, 32, 32)


def test_datamodule_bad_config():
    with pytest.raises(ValueError, match="sample, folder"):
        ImageDataModule(source="imagenet")
    with pytest.raises(ValueError, match="data.train_dir"):
        ImageDataModule(source="folder")


@pytest.mark.skipif(not KODAK.is_dir(), reason="../shared/data/kodak not present")
def test_kodak_loads_24_images():
    ds = ImageFolderDataset(KODAK, None, train=False, name="data.val_dir")
    assert len(ds) == 24
    x = ds[0]
    assert x.shape == (3, 512, 768) and 0 <= x.min() and x.max() <= 1


def test_seeded_data_order_does_not_depend_on_other_random_draws(tiny_images):
    """data.seed (= seed): batches, crops and flips come from their own generators, so two arms of
    a study see the same data whatever their models draw from the global RNG in between."""
    import torch

    from codecx.data import ImageDataModule

    def batches(seed, noise_draws):
        dm = ImageDataModule(source="folder", train_dir=tiny_images, val_dir=tiny_images, crop_size=32,
                             batch_size=2, repeat=3, seed=seed)
        dm.setup("fit")
        out = []
        for i, b in enumerate(dm.train_dataloader()):
            torch.rand(noise_draws)  # e.g. a model's quantization noise, different in each arm
            out.append(b)
            if i == 2:
                break
        return out

    torch.manual_seed(0)
    a = batches(3, 1)
    torch.manual_seed(123)
    b = batches(3, 1000)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = batches(4, 1)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # repeats of one image within an epoch get different crops
    flat = torch.cat(a)
    assert len({tuple(v.flatten()[:64].tolist()) for v in flat}) == len(flat)
