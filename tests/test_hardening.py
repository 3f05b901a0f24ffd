"""Hardening (issue 14): no code from checkpoints, bounded decoding, honest image loading,
run-directory integrity, the non-finite guard, and every bad input a clean error. The attack
files are built here."""
from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codecx.conf import CONF_DIR
from codecx.coding.container import (BitstreamError, Header, check_method_names, decode_image,
                                     pack)
from codecx.config import ConfigError, precheck
from codecx.eval.checkpoint import CheckpointError, load_checkpoint
from conftest import TINY, run_train



pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- 1. no code from checkpoints
class _RunsCode:
    """Unpickling this runs `touch MARK` (what a hostile .ckpt does)."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


def _evil_checkpoint(path: Path, mark: Path) -> Path:
    torch.save({"state_dict": {}, "codecx_config": {"model": {}}, "global_step": 1,
                "payload": _RunsCode(mark)}, path)
    return path


def test_hostile_checkpoint_is_refused_by_every_entry_point(tmp_path, capsys):
    from codecx.cli import main as cli_main
    from codecx.eval.checkpoint import checkpoint_step
    from codecx.eval.load import load_codec
    from codecx.eval.checkpoint import CorruptCheckpointError, resume_checkpoint

    mark = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", mark)
    # the file does run code under a plain unpickler: the attack is real
    torch.load(evil, weights_only=False)
    assert mark.exists()
    mark.unlink()

    with pytest.raises(CheckpointError, match=r"refused: loading it would need the Python global (os|posix).system"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_codec(evil)
    assert checkpoint_step(evil) == -1
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    for argv in (["compress", str(img), "-c", str(evil), "-o", str(tmp_path / "x.cdcx")],
                 ["decompress", str(tmp_path / "x.cdcx"), "-c", str(evil)]):
        if argv[0] == "decompress":  # a well-formed file, so that the checkpoint is reached
            (tmp_path / "x.cdcx").write_bytes(pack(Header(bytes(8), (64, 64), (4, 4), (1, 1), {}),
                                                   [b"\0" * 8, b"\0" * 8]))
        assert cli_main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refused" in err, err
    # resume: a hostile last.ckpt in the run directory is refused, never unpickled
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    _evil_checkpoint(ckpt_dir / "last.ckpt", mark)
    with pytest.raises(CorruptCheckpointError, match="resume=false"):
        resume_checkpoint(ckpt_dir)
    assert not mark.exists()


def test_codecx_checkpoint_contents_are_allow_listed(tmp_path):
    """What codecx and Lightning store (tensors, plain containers, paths) loads."""
    ckpt = {"state_dict": {"codec.w": torch.ones(2)}, "codecx_config": {"model": {"name": "x"}},
            "global_step": 3, "datamodule_hyper_parameters": {"train_dir": Path("/data/train")}}
    torch.save(ckpt, tmp_path / "ok.ckpt")
    loaded = load_checkpoint(tmp_path / "ok.ckpt")
    assert loaded["global_step"] == 3 and loaded["datamodule_hyper_parameters"]["train_dir"] == Path("/data/train")


# ---------------------------------------------------------------- 2. bounded decoding
def _tiny(backbone: str = "mbt_mean"):
    from conftest import tiny_codec

    torch.manual_seed(0)
    codec = tiny_codec(backbone, N=8, M=8).eval()
    codec.update(force=True)
    return codec


def test_forged_headers_are_refused_before_decoding():
    codec = _tiny()
    fp = bytes(8)
    streams = [b"\x01" * 16, b"\x02" * 16]
    cases = {
        # the 570-byte attack: 65535 x 65535 with matching latent sizes
        "more than the decoder's cap": Header(fp, (65535, 65535), (4096, 4096), (1024, 1024), {}),
        "do not fit": Header(fp, (64, 64), (40, 40), (1, 1), {}),
        "do not fit ": Header(fp, (64, 64), (4, 4), None, {}),
    }
    for expected, header in cases.items():
        with pytest.raises(BitstreamError, match=expected.strip()):
            decode_image(codec, pack(header, streams))
    # the cap is configurable, and counts pixels
    ok = Header(fp, (128, 128), (8, 8), (2, 2), {})
    with pytest.raises(BitstreamError, match="cap of 10000 pixels"):
        decode_image(codec, pack(ok, streams), max_pixels=10_000)
    with pytest.raises(BitstreamError, match=r"decodes 2 stream\(s\), the file has 1"):
        decode_image(codec, pack(ok, streams[:1]))


def test_decode_needing_more_memory_than_free_is_refused(monkeypatch):
    import codecx.coding.container as container

    codec = _tiny()
    header = Header(bytes(8), (4096, 4096), (256, 256), (64, 64), {})
    need = container.decode_memory(codec.backbone, (4096, 4096))
    assert need > 4096 * 4096 * 8 * 4 // 4  # N=8 channels at half resolution, at least once
    monkeypatch.setattr(container, "_free_memory", lambda: need // 2)
    with pytest.raises(BitstreamError, match=r"needs about .* GiB, more than the .* GiB of free memory"):
        decode_image(codec, pack(header, [b"\1" * 8, b"\2" * 8]))


def test_latent_sizes_follow_the_model_strides():
    from codecx.coding.container import expected_latent_shapes

    hyper, fact = _tiny("mbt_mean").backbone, _tiny("bmshj_factorized").backbone
    assert expected_latent_shapes(hyper, (33, 70)) == ((4, 8), (1, 2))
    assert expected_latent_shapes(fact, (33, 70)) == ((3, 5), None)


@pytest.mark.medium
def test_header_method_names_are_checked_before_anything_is_built(tiny_ckpt, tmp_path, capsys,
                                                                   monkeypatch):
    import codecx.cli as cli

    known = cli.known_methods()
    assert "hex" in known["quantizer"] and "latent" in known["shift"] and "latent_shift" in known["transform"]
    for opts in ({"quantizer": "../model/mbt_mean"}, {"shift": "../../etc"}, {"quantizer": 7},
                 {"transform": "latent_shift,../x"}):
        with pytest.raises(BitstreamError, match="not a known option"):
            check_method_names(opts, known)
    check_method_names({"quantizer": "hex", "shift": "latent", "shift_index": 3}, known)
    check_method_names({"quantizer": "hex", "transform": "latent_shift", "shift": "sign"}, known)

    built = []
    monkeypatch.setattr(cli, "load_method_codec", lambda *a: built.append(a))
    f = tmp_path / "forged.cdcx"
    f.write_bytes(pack(Header(bytes(8), (64, 64), (4, 4), (1, 1), {"quantizer": "../model/mbt_mean"}),
                       [b"\0" * 4, b"\0" * 4]))
    assert cli.main(["decompress", str(f), "-c", str(tiny_ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a known option" in err and not built


def test_native_stderr_of_a_failed_decode_is_kept_off_stderr(capfd):
    from codecx.coding.container import _stderr_captured

    with _stderr_captured() as captured:
        os.write(2, b"thread '<unnamed>' panicked at src/lib.rs:1:1\nnote: run with RUST_BACKTRACE=1\n")
        text = captured()
    assert "panicked" in text
    assert capfd.readouterr().err == ""


@pytest.mark.medium
def test_small_fuzz_every_outcome_is_an_image_or_a_bitstream_error(capfd):
    """The fast fuzz (the slow one: >= 1000 mutations per setup in a worker with a per-case
    timeout): scalar and lattice files, mutated, CRC recomputed for half of them."""
    from codecx.coding.fuzz import build_setup, mutate

    for setup in ("scalar", "hex"):
        codec, fp, data = build_setup(setup)
        outcomes = {"decoded": 0, "error": 0}
        for i in range(30):
            bad = mutate(data, random.Random(f"{setup}/{i}"))
            try:
                decode_image(codec, bad, fp)
                outcomes["decoded"] += 1
            except BitstreamError:
                outcomes["error"] += 1
        assert outcomes["error"] > 0
    assert "panicked" not in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_fuzz_1000_mutations_per_setup():
    from codecx.coding.fuzz import SETUPS, fuzz, transform_setups

    for name in [*SETUPS, *transform_setups()]:
        s = fuzz(name, cases=1000, timeout=30.0)
        assert s["uncaught"] == [] and s["hangs"] == 0, s
        assert s["peak_rss_mib"] < 4096, s


# ---------------------------------------------------------------- 3. images
def _png16(path: Path, a: np.ndarray) -> Path:
    """A 16-bit PNG (grey or RGB) written by hand (PIL writes no 48-bit PNG)."""
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_every_image_mode_loads_as_8_bit_rgb(tmp_path):
    from codecx.cli import read_image
    from codecx.data import ImageFolderDataset, read_rgb

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    grey16 = (np.arange(40 * 64).reshape(40, 64) * 25).astype(np.uint16)
    files = {
        "grey16.png": _png16(tmp_path / "grey16.png", grey16),
        "rgb16.png": _png16(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257),
    }
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 64), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    # a portrait photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.png", exif=exif)

    g = read_rgb(files["grey16.png"])
    assert g.shape == (40, 64, 3) and g.dtype == np.uint8
    assert np.array_equal(g[..., 0], np.rint(grey16 / 257).astype(np.uint8))  # not all white
    assert np.array_equal(read_rgb(files["rgb16.png"]), rgb)
    pal = Image.open(tmp_path / "palette.png").convert("RGB")
    assert np.array_equal(read_rgb(tmp_path / "palette.png"), np.asarray(pal))
    assert np.array_equal(read_rgb(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, -1))
    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), rgb)  # alpha dropped
    assert read_rgb(tmp_path / "cmyk.tif").shape == (40, 64, 3)
    up = read_rgb(tmp_path / "rotated.png")
    assert up.shape == (64, 40, 3) and np.array_equal(up, np.rot90(rgb, -1))
    assert read_image(tmp_path / "rotated.png").shape == (1, 3, 64, 40)
    # the dataset: upright sizes decide the crop, 16-bit grey is not white
    ds = ImageFolderDataset(tmp_path, crop_size=None, train=False)
    by_name = {Path(p).name: i for i, p in enumerate(ds.paths)}
    assert ds[by_name["rotated.png"]].shape == (3, 64, 40)
    assert ds[by_name["grey16.png"]].mean() < 0.5
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="floating-point"):
        read_rgb(tmp_path / "float.tif")


def test_eval_skips_images_smaller_than_the_stride_and_aggregates_by_pixels():
    from codecx.eval.loop import evaluate, summarize

    codec = _tiny()
    images = [("tiny.png", torch.rand(1, 3, 1, 1)), ("ok.png", torch.rand(1, 3, 64, 96))]
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) smaller than the model's stride \(64 px\): tiny.png"):
        rows = evaluate(codec, images, bytes(8), progress=False)
    assert [r["image"] for r in rows] == ["ok.png"]
    # pixel-weighted aggregates beside the means; one image too small for MS-SSIM does not blank it
    rows = [{"bpp": 1.0, "bytes": 100, "height": 20, "width": 40, "psnr-rgb": 30.0, "ms-ssim": float("nan")},
            {"bpp": 0.5, "bytes": 400, "height": 80, "width": 80, "psnr-rgb": 20.0, "ms-ssim": 0.9}]
    p = summarize(rows)
    assert p["bpp"] == pytest.approx(0.75)
    assert p["bpp_weighted"] == pytest.approx(8 * 500 / (800 + 6400))
    mse = (800 * 255**2 * 1e-3 + 6400 * 255**2 * 1e-2) / 7200
    assert p["psnr-rgb_weighted"] == pytest.approx(10 * np.log10(255**2 / mse))
    assert p["ms-ssim"] == pytest.approx(0.9) and p["ms-ssim_images"] == 1


# ---------------------------------------------------------------- 4. run directory
def test_atomic_save_keeps_previous_and_leaves_no_temp_files(tmp_path, monkeypatch):
    import tempfile

    from codecx.eval.checkpoint import (AtomicCheckpointIO, NonFiniteModelError, remove_temp_files,
                                      resume_checkpoint)

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    io_ = AtomicCheckpointIO()
    d = tmp_path / "checkpoints"
    for step in (1, 2):
        io_.save_checkpoint({"state_dict": {"w": torch.full((2,), float(step))}, "global_step": step},
                            d / "last.ckpt")
    assert sorted(p.name for p in d.iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    assert list(tmpdir.iterdir()) == []  # nothing in $TMPDIR
    assert torch.load(d / "last.prev.ckpt")["global_step"] == 1
    # a failing write leaves the target intact and no temp file
    with pytest.raises(Exception):
        io_.save_checkpoint({"state_dict": {}, "global_step": 3, "bad": lambda: 0}, d / "last.ckpt")
    assert torch.load(d / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in d.iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    # a non-finite model is never written
    with pytest.raises(NonFiniteModelError, match=r"step 4: .*not finite.*w"):
        io_.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 4},
                            d / "last.ckpt")
    assert torch.load(d / "last.ckpt")["global_step"] == 2
    # an orphan of a killed writer is removed (under the run lock)
    (d / ".last.ckpt.tmp-12345").write_bytes(b"partial")
    assert [p.name for p in remove_temp_files(d)] == [".last.ckpt.tmp-12345"]
    # a truncated last.ckpt: resume falls back to the kept previous one, with a warning
    data = (d / "last.ckpt").read_bytes()
    (d / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="damaged"):
        assert resume_checkpoint(d) == d / "last.prev.ckpt"
    (d / "last.prev.ckpt").unlink()
    from codecx.eval.checkpoint import CorruptCheckpointError

    with pytest.raises(CorruptCheckpointError, match=r"last.ckpt is damaged .*resume=false"):
        resume_checkpoint(d)


@pytest.mark.medium
def test_run_dir_lock_refuses_a_second_run(tmp_path):
    from codecx.eval.checkpoint import RunDirLock, RunDirLockedError

    run_dir = tmp_path / "run"
    lock = RunDirLock(run_dir).acquire()
    try:
        with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
            RunDirLock(run_dir).acquire()
        r = run_train([*TINY, "trainer.max_steps=1", f"hydra.run.dir={run_dir}"], timeout=300)
        assert r.returncode == 1, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].startswith("codecx: error: another run")
        assert not (run_dir / ".hydra").exists() and not (run_dir / "checkpoints").exists()
    finally:
        lock.release()
    RunDirLock(run_dir).acquire().release()  # free again


@pytest.mark.slow
def test_best_ckpt_is_one_file_across_a_restart(tmp_path):
    args = [*TINY, "trainer.val_check_interval=1", "trainer.check_val_every_n_epoch=null",
            "checkpoint.every_n_steps=1", f"hydra.run.dir={tmp_path}"]
    assert run_train([*args, "trainer.max_steps=2"]).returncode == 0
    r = run_train([*args, "trainer.max_steps=4"])
    assert r.returncode == 0, r.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt", "last.prev.ckpt"], names
    ckpts = {n: torch.load(tmp_path / "checkpoints" / n, weights_only=True) for n in ("best.ckpt", "last.ckpt")}
    state = [v for k, v in ckpts["last.ckpt"]["callbacks"].items() if k.startswith("BestCheckpoint")][0]
    assert Path(state["best_model_path"]).name == "best.ckpt"  # the summary's path is the best one
    assert ckpts["best.ckpt"]["global_step"] <= ckpts["last.ckpt"]["global_step"] == 4


# ---------------------------------------------------------------- 5. non-finite training
@pytest.mark.medium
def test_non_finite_training_stops_with_one_line_and_saves_no_nan(tmp_path):
    r = run_train([*TINY, "trainer.max_steps=6", "checkpoint.every_n_steps=1", "schedule.lr=1e6",
                   f"hydra.run.dir={tmp_path}"], timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    last_line = r.stderr.strip().splitlines()[-1]
    assert last_line.startswith("codecx: error:") and "step" in last_line and "finite" in last_line
    assert "Traceback" not in r.stderr
    for p in (tmp_path / "checkpoints").glob("*.ckpt"):
        state = torch.load(p, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), p


# ---------------------------------------------------------------- 6. bad input
BAD = [  # (overrides, expected message) - each must fail in the pre-flight check
    (["lmbda=inf"], "lmbda=inf: must be a finite number"),
    (["lmbda=nan"], "finite"),
    (["lmbda=0.0067,-1"], r"lmbda=-1.*sweep job"),
    (["alpha=-1"], "alpha=-1"),
    (["model.N=0"], r"model.N=0: must be an integer >= 1"),
    (["data.crop_size=0"], "data.crop_size=0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["eval.every_n_steps=-1"], "eval.every_n_steps=-1"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["trainer.precision=bogus"], r"bogus"),
    (["trainer.max_epochs=0", "trainer.max_steps=-1"], "0 trains nothing"),
    (["trainer.max_steps=0"], "0 trains nothing"),
    (["+trainer.limit_train_batches=0"], "limit_train_batches=0"),
    (["data=folder"], "data.train_dir"),
    (["data=folder", "data.train_dir=/nonexistent/x"], "directory not found"),
    (["data.crop_size=4096"], "every image is smaller than the 4096x4096 crop"),
    (["quantizer=hex", "model=bmshj_factorized"], "quantizer=hex: lattice quantizers need a Gaussian"),
    (["model=bmshj_factorized,mbt_mean", "quantizer=hex,noise"],
     r"lattice quantizers need.*sweep job .*model=bmshj_factorized quantizer=hex"),
    (["model.weights=/nonexistent.pth"], "nonexistent.pth"),
]


@pytest.mark.parametrize("overrides, expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_fails_in_the_preflight_check(overrides, expected):
    from codecx.train import validate_config

    with pytest.raises(ConfigError, match=expected) as e:
        precheck(["model.N=8", "model.M=8", *overrides], CONF_DIR, "train", validate_config)
    assert "\n" not in str(e.value)


def test_empty_data_folder_and_gpu_without_gpu(tmp_path):
    from codecx.train import validate_config

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        precheck(["data=folder", f"data.train_dir={tmp_path}/empty", f"data.val_dir={tmp_path}/empty"],
                 CONF_DIR, "train", validate_config)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
            precheck(["trainer.accelerator=gpu"], CONF_DIR, "train", validate_config)


@pytest.mark.medium
def test_bad_sweep_value_fails_before_the_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_train(["-m", *TINY, "trainer.max_steps=1", "lmbda=0.0067,-1", f"hydra.sweep.dir={sweep}"],
                  timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lmbda=-1" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not sweep.exists()  # nothing trained, nothing written
