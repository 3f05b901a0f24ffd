"""Hardening, round two (issue 32): non-finite weights and latents, sweeps that survive a failed
job, SIGTERM and submitit's preemption signal, memory-bounded encoding, a full disk, an image that
breaks during training, atomic `codecx compress`, resuming with another objective, eval's image
count and animated GIFs. Real coder, real Lightning, real train.py / eval.py / Hydra launchers."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codecx.coding.container import (BitstreamError, ImageTooLargeError, check_encode, decode_image,
                                     encode_image, encode_memory)
from codecx.coding.rans import NonFiniteLatentError
from codecx.conf import CONF_DIR
from codecx.config import ConfigError, precheck
from codecx.eval.checkpoint import CheckpointError
from codecx.eval.load import load_codec
from conftest import ROOT, TINY, logged, run_train, tiny_codec

NAN, INF = float("nan"), float("inf")
# a train.py checkpoint's configuration, built in-process (no training needed to test loading)
CONFIG = {"model": {"_target_": "codecx.models.backbones.MbtMean", "name": "mbt_mean", "N": 8, "M": 12,
                    "weights": None},
          "quantizer": {"_target_": "codecx.quantizers.NoiseQuantizer"}, "lmbda": 0.0018}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ckpt(path: Path, part: str = "", value: float = NAN):
    """(path, poisoned tensor name) of a codecx checkpoint whose first `part` tensor holds `value`."""
    from codecx.models.build import build_codec

    torch.manual_seed(0)
    state = {f"codec.{k}": v.clone() for k, v in build_codec(CONFIG).state_dict().items()}
    name = None
    if part:
        name = next(k for k in state if f".{part}." in k and state[k].is_floating_point())
        state[name].view(-1)[0] = value
    torch.save({"state_dict": state, "codecx_config": CONFIG, "global_step": 2}, path)
    return path, name


def _png(path: Path, w: int = 64, h: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _tiny():
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean", N=8, M=8).eval()
    codec.update(force=True)
    return codec


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- 1. non-finite weights / latents
@pytest.mark.parametrize("part, value", [("g_a", NAN), ("h_s", INF), ("g_s", NAN)])
def test_non_finite_checkpoint_is_refused_at_load_naming_the_tensor(tmp_path, capsys, part, value):
    from codecx.cli import main as cli_main

    ckpt, name = _ckpt(tmp_path / "diverged.ckpt", part, value)
    with pytest.raises(CheckpointError, match=rf"not finite \(NaN/Inf in {re.escape(name)}\).*earlier checkpoint"):
        load_codec(ckpt)
    out = tmp_path / "x.cdcx"
    assert cli_main(["compress", str(_png(tmp_path / "x.png")), "-c", str(ckpt), "-o", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert name in line and "diverged or damaged" in line and not out.exists()


def test_non_finite_compressai_state_dict_is_refused(tmp_path):
    from codecx.models.build import build_backbone
    from codecx.train import validate_config

    state = build_backbone("mbt_mean", N=8, M=12).state_dict()
    state["g_a.0.weight"].view(-1)[0] = NAN
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ValueError,
                       match=r"model.weights=.*nan.pth: parameters are not finite \(NaN/Inf in g_a.0.weight\)"):
        build_backbone("mbt_mean", N=8, M=12, weights=str(tmp_path / "nan.pth"))
    with pytest.raises(ConfigError, match=r"cannot build the model: model.weights=.*not finite.*g_a.0.weight"):
        precheck(["model.N=8", "model.M=12", f"model.weights={tmp_path / 'nan.pth'}"], CONF_DIR, "train",
                 validate_config)


@pytest.mark.timeout(300)  # before the fix the rANS encoder never returned on a NaN latent
def test_non_finite_latents_never_reach_the_rans_encoder():
    from codecx.coding.rans import RansStreamEncoder

    x = torch.rand(1, 3, 64, 64)
    codec = _tiny()
    codec.backbone.g_a[0].weight.data.view(-1)[0] = NAN
    with pytest.raises(NonFiniteLatentError, match=r"the latent y \(g_a's output\) is not finite"):
        encode_image(codec, x, bytes(8))
    codec = _tiny()  # finite latents, NaN means: caught at the coder itself
    codec.backbone.h_s[0].weight.data.fill_(NAN)
    with pytest.raises(NonFiniteLatentError, match="a symbol of the latent is not finite"):
        encode_image(codec, x, bytes(8))
    codec = _tiny()
    x[0, 1, 5, 5] = NAN  # a NaN pixel
    with pytest.raises(NonFiniteLatentError):
        encode_image(codec, x, bytes(8))
    enc = RansStreamEncoder(codec.backbone.y_entropy_model)
    with pytest.raises(NonFiniteLatentError):
        enc.encode(torch.tensor([1.0, NAN]), torch.tensor([0, 0]))
    # finite but huge (CompressAI's escape coding never ends near 2**27): refused, named
    with pytest.raises(NonFiniteLatentError, match="out of range"):
        enc.encode(torch.tensor([1.0, 2.0**28]), torch.tensor([0, 0]))
    enc.encode(torch.tensor([-(2.0**26), 3.0]), torch.tensor([0, 0]))  # the bound itself codes
    assert len(enc.finish()) > 0


def test_nan_decoder_weights_are_blamed_on_the_checkpoint_not_the_file():
    codec = _tiny()
    data = encode_image(codec, torch.rand(1, 3, 64, 64), bytes(8))
    decode_image(codec, data)  # fine
    codec.backbone.g_s[0].weight.data.view(-1)[0] = NAN
    with pytest.raises(ValueError, match=r"decoder's parameters are not finite \(NaN/Inf in backbone.g_s.0.weight\)"
                                         r".*checkpoint.*the file may be fine") as e:
        decode_image(codec, data)
    assert not isinstance(e.value, BitstreamError)


# ---------------------------------------------------------------- 2. a sweep survives a failed job
def test_lmbda_is_bounded_by_what_a_codec_trains_with():
    from codecx.train import LMBDA_MAX, validate_config

    with pytest.raises(ConfigError, match=r"lmbda=1e\+30: must be at most 1000.*overflow float32") as e:
        precheck(["model.N=8", "model.M=8", "lmbda=1e30"], CONF_DIR, "train", validate_config)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"lmbda=1e\+30.*sweep job"):
        precheck(["model.N=8", "model.M=8", "lmbda=0.0067,1e30"], CONF_DIR, "train", validate_config)
    precheck(["model.N=8", "model.M=8", f"lmbda={LMBDA_MAX}"], CONF_DIR, "train", validate_config)


@pytest.mark.medium
def test_a_failed_sweep_job_is_recorded_and_the_others_run(tmp_path):
    from codecx.eval.results import FAILURE_FILE

    sweep = tmp_path / "sweep"
    r = run_train(["-m", *TINY, "trainer.max_steps=3", "eval.every_n_steps=0", "lmbda=0.0018,0.0067",
                   "schedule.lr=1e6,1e-3", f"hydra.sweep.dir={sweep}"], timeout=1200)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("codecx: error: 2 of 4 sweep job(s) failed") and "schedule.lr=1000000.0" in last
    assert "Traceback" not in r.stderr
    jobs = [p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml")]
    bad = [j for j in jobs if "schedule.lr=1000000.0" in j.name]
    good = [j for j in jobs if j not in bad]
    assert len(bad) == len(good) == 2
    for j in bad:
        assert "non-finite" in json.loads((j / FAILURE_FILE).read_text())["reason"]
    for j in good:  # ran to the end, after the failed ones
        assert (j / "results.json").is_file() and not (j / FAILURE_FILE).exists()
    md = (sweep / "report.md").read_text()
    assert "## Failed jobs" in md and md.count("**failed**") == 2 and "non-finite loss term" in md


# ---------------------------------------------------------------- 3. SIGTERM / preemption
def test_stop_on_sigterm_raises_preempted_with_exit_143():
    from codecx.lit.preempt import EXIT_SIGTERM, Preempted, stop_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as e:
        with stop_on_sigterm("during X", "do Y"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler raises at the next bytecode
                time.sleep(0.01)
    assert e.value.code == EXIT_SIGTERM == 143 and e.value.line == "stopped by SIGTERM during X; do Y"
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Preempted):  # a SIGTERM Lightning already noted: at once
        with stop_on_sigterm("during X", pending=True):
            pass


def _wait(p: subprocess.Popen, ready, what: str, limit: float = 900) -> None:
    end = time.time() + limit
    while not ready():
        assert p.poll() is None, f"the run ended before {what}: {p.communicate()[1][-3000:]}"
        assert time.time() < end, f"no {what} after {limit} s"
        time.sleep(0.1)


def _popen_train(args):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.medium
def test_sigterm_in_training_saves_the_step_and_exits_143_then_resume_loses_nothing(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=12", "checkpoint.every_n_steps=100", "eval.every_n_steps=0",
            "+logger.flush_logs_every_n_steps=1", f"hydra.run.dir={run}"]
    p = _popen_train(args)
    _wait(p, lambda: max([s for s, _ in logged(run)], default=-1) >= 3, "logged step 3")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"codecx: stopped by SIGTERM at step (\d+): (.*last\.ckpt) saved at this step; "
                     r"run the same command again to resume", last)
    assert m, last
    # checkpoint.every_n_steps=100: only the signal wrote it, at the step training stopped
    assert torch.load(m[2], weights_only=True)["global_step"] == int(m[1]) >= 4
    # resuming with another objective: one line and the way out, the checkpoint untouched
    r = run_train([*args, "lmbda=0.0035"], timeout=600)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "lmbda=0.0018 -> 0.0035" in line and "resume=false" in line and "model.weights=" in line
    # the same command resumes at that step: every step logged once, none lost
    r = run_train(args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for s, _ in logged(run)] == list(range(12))


@pytest.mark.medium
def test_sigterm_during_the_final_evaluation_stops_it(tmp_path):
    run = tmp_path / "run"
    # full validation images (512x512 and 600x400) make the final evaluation last a while
    args = [*TINY, "trainer.max_steps=2", "checkpoint.every_n_steps=100", "eval.every_n_steps=0",
            "data.max_val_images=2", "data.val_crop_size=null", f"hydra.run.dir={run}"]
    p = _popen_train(args)
    last_ckpt = run / "checkpoints" / "last.ckpt"  # written once, at the last step, before the evaluation
    _wait(p, last_ckpt.is_file, "last.ckpt")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("codecx: stopped by SIGTERM during the final evaluation; training is complete"), line
    assert not (run / "results.json").exists()
    r = run_train(args, timeout=600)  # the same command evaluates it
    assert r.returncode == 0 and (run / "results.json").is_file(), r.stderr[-3000:]


# ---------------------------------------------------------------- 4. memory-bounded encoding
def _big_palette_png(path: Path, w: int, h: int) -> Path:
    """A w x h palette PNG of one colour, written row by row (a few hundred kB, no w*h buffer)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    z, row, idat = zlib.compressobj(9), b"\x00" * (w + 1), []
    for _ in range(h):
        idat.append(z.compress(row))
    idat.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes([200, 100, 50])) + chunk(b"IDAT", b"".join(idat))
                     + chunk(b"IEND", b""))
    return path


def test_the_encoder_refuses_an_image_over_the_cap_or_the_free_memory(tmp_path, monkeypatch, capsys):
    import codecx.cli as cli
    import codecx.coding.container as container

    codec = _tiny()
    need = encode_memory(codec.backbone, (12000, 12000))
    assert need > 12000 * 12000 // 4 * 8 * 4 * 2  # g_a's N=8 channels at half resolution, more than twice
    monkeypatch.setattr(container, "_free_memory", lambda: need // 2)
    with pytest.raises(ImageTooLargeError, match=r"big.png: encoding a 12000x12000 image with this model needs "
                                                 r"about .* GiB, more than the .* GiB of free memory"):
        check_encode(codec.backbone, (12000, 12000), "big.png")
    with pytest.raises(ImageTooLargeError, match=r"x.png: a 128x128 image \(16384 pixels\) is more than the "
                                                 r"encoder's cap of 10000 pixels.*max_pixels=N"):
        check_encode(codec.backbone, (128, 128), "x.png", max_pixels=10_000)
    with pytest.raises(ImageTooLargeError, match="65535 px a side"):
        check_encode(codec.backbone, (70000, 8), "wide.png")
    with pytest.raises(ImageTooLargeError, match="cap of 10000"):  # encode_image checks before coding
        encode_image(codec, torch.rand(1, 3, 128, 128), bytes(8), max_pixels=10_000)

    # the CLI: the size from the file's header, refused before any pixel is decoded
    ckpt, _ = _ckpt(tmp_path / "ok.ckpt")
    big = _big_palette_png(tmp_path / "big.png", 12000, 12000)
    assert big.stat().st_size < 1_000_000
    monkeypatch.setattr(cli, "read_image", lambda *a: pytest.fail("pixels decoded before the check"))
    for extra, expected in (([], "more than the"), (["--max-pixels", "1000000"], "--max-pixels N")):
        assert cli.main(["compress", str(big), "-c", str(ckpt), *extra]) == 1
        line = _one_line(capsys.readouterr().err)
        assert str(big) in line and expected in line and "12000x12000" in line
    assert not (tmp_path / "big.cdcx").exists()


def test_eval_skips_an_image_the_encoder_refuses_and_codes_the_others(tmp_path, monkeypatch):
    import codecx.coding.container as container
    from codecx.data import ImageFolderDataset
    from codecx.eval.main import image_count
    from codecx.eval.loop import dataset_images, evaluate

    codec = _tiny()
    small, large = ("a.png", torch.rand(1, 3, 64, 64)), ("big.png", torch.rand(1, 3, 128, 192))
    free = (encode_memory(codec.backbone, (64, 64)) + encode_memory(codec.backbone, (128, 192))) // 2
    monkeypatch.setattr(container, "_free_memory", lambda: free)
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) the encoder refuses: big.png: encoding a 192x128"):
        rows = evaluate(codec, [large, small], bytes(8), progress=False)
    assert [r["image"] for r in rows] == ["a.png"]
    monkeypatch.undo()
    # eval.py's loading: an image over max_pixels is named from its header and never loaded
    _png(tmp_path / "a.png", 64, 64)
    _png(tmp_path / "b.png", 128, 96)
    ds = ImageFolderDataset(tmp_path, None, train=False)
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) larger than the encoder's cap of 5000 pixels "
                                         r"\(max_pixels=N raises it\): b.png \(128x96\)"):
        images = dataset_images(ds, max_pixels=5000)
    assert [n for n, _ in images] == ["a.png"]
    # the summary counts the images evaluated, and the skipped ones
    assert image_count([{"images": 1}], 2) == "1 image(s) (1 of 2 skipped, see the warnings)"
    assert image_count([{"images": 2}, {"images": 2}], 2) == "2 image(s)"


# ---------------------------------------------------------------- 5. disk full
def test_disk_full_while_writing_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    from codecx.eval.checkpoint import AtomicCheckpointIO, CheckpointWriteError

    io_, d = AtomicCheckpointIO(), tmp_path / "checkpoints"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, d / "last.ckpt")
    real_save = torch.save

    def full(obj, f, *a, **k):  # a partial write, then the OS says the disk is full
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def zip_full(obj, f, *a, **k):  # torch's zip writer: a RuntimeError whose context is the OSError
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    for fake in (full, zip_full):
        monkeypatch.setattr(torch, "save", fake)
        with pytest.raises(CheckpointWriteError) as e:
            io_.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 2}, d / "last.ckpt")
        msg = str(e.value)
        assert "\n" not in msg and e.value.errno == errno.ENOSPC
        assert msg.startswith(f"cannot write checkpoint {d / 'last.ckpt'}: no space left on device; "
                              "the previous last.ckpt is kept unchanged"), msg
        monkeypatch.setattr(torch, "save", real_save)
        assert torch.load(d / "last.ckpt")["global_step"] == 1
        assert sorted(p.name for p in d.iterdir()) == ["last.ckpt"]  # no temp file, nothing renamed
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):  # any other failure is not called a full disk
        io_.save_checkpoint({"state_dict": {}, "global_step": 3}, d / "last.ckpt")


def _full_disk_script() -> str:
    """The kill harness's full-disk wrapper (experiments/hardening/kill_resume.py FULL_DISK): runs
    a script whose torch.save fails with ENOSPC after SAVES_BEFORE_FULL checkpoints."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kill_resume", Path(__file__).resolve().parents[1] / "experiments" / "hardening" / "kill_resume.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return harness.FULL_DISK


@pytest.mark.medium
def test_disk_full_during_training_is_one_line_and_resume_works(tmp_path):
    (tmp_path / "full_disk.py").write_text(_full_disk_script())
    run = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=6", "checkpoint.every_n_steps=2", "eval.every_n_steps=0",
            f"hydra.run.dir={run}"]
    r = subprocess.run([sys.executable, str(tmp_path / "full_disk.py"), str(ROOT / "train.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, SAVES_BEFORE_FULL="1"))
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert last == (f"codecx: error: cannot write checkpoint {ckpt}: no space left on device; the previous "
                    f"last.ckpt is kept unchanged; free space on {ckpt.parent} (or write elsewhere) and run again")
    assert "Traceback" not in r.stderr
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    assert not any(".tmp-" in p.name for p in ckpt.parent.iterdir())
    r = run_train(args, timeout=600)  # space again: it resumes from the kept checkpoint
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(ckpt, weights_only=True)["global_step"] == 6 and "resuming from" in r.stderr + r.stdout


# ---------------------------------------------------------------- 6. an image that breaks in training
def test_an_image_that_breaks_during_training_is_skipped_with_a_warning(tmp_path):
    from codecx.data import ImageDataModule, ImageFolderDataset
    from codecx.data.images import ImageReadError

    for i in range(3):
        _png(tmp_path / "train" / f"img{i}.png", 48, 48, seed=i)
    ds = ImageFolderDataset(tmp_path / "train", 32, train=True, name="data.train_dir", skip_unreadable=True)
    val = ImageFolderDataset(tmp_path / "train", None, train=False, name="data.val_dir")
    bad = ds.paths[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated after the pre-flight check read it
    with pytest.warns(UserWarning, match=rf"data.train_dir: skipping an image that can no longer be read "
                                         rf"\({re.escape(str(bad))}: not a readable image.*training goes on"):
        x = ds[1]
    assert x.shape == (3, 32, 32)  # the next image instead
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped from then on, without another warning
        assert [tuple(ds[i].shape) for i in range(len(ds))] == [(3, 32, 32)] * 3
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):  # validation: one line naming it
        val[1]
    for p in ds.paths:
        p.write_bytes(b"gone")
    with warnings.catch_warnings(), pytest.raises(ImageReadError, match="none of the 3 image files can be read"):
        warnings.simplefilter("ignore")
        ds[0]
    dm = ImageDataModule(source="folder", train_dir=tmp_path / "ok", val_dir=tmp_path / "ok", crop_size=32,
                         batch_size=1)
    for i in range(2):
        _png(tmp_path / "ok" / f"{i}.png", 48, 48, seed=i)
    dm.setup("fit")
    assert dm.train_set.skip_unreadable and not dm.val_set.skip_unreadable


@pytest.mark.medium
def test_training_goes_on_when_an_image_breaks_at_step_2(tmp_path):
    d, v = tmp_path / "train", tmp_path / "val"
    for i in range(3):
        _png(d / f"img{i}.png", 80, 80, seed=i)
    _png(v / "val.png", 64, 64, seed=9)
    run = tmp_path / "run"
    args = ["model.N=8", "model.M=12", "data=folder", f"data.train_dir={d}", f"data.val_dir={v}",
            "data.crop_size=64", "data.batch_size=1", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", "+logger.flush_logs_every_n_steps=1", "trainer.max_steps=10",
            "eval.every_n_steps=0", f"hydra.run.dir={run}"]
    p = _popen_train(args)
    _wait(p, lambda: max([s for s, _ in logged(run)], default=-1) >= 2, "logged step 2")
    data = (d / "img1.png").read_bytes()
    (d / "img1.png").write_bytes(data[: len(data) // 3])  # a flaky disk truncates it mid-run
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert f"skipping an image that can no longer be read ({d / 'img1.png'}" in err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


# ---------------------------------------------------------------- 7. atomic codecx compress
def test_compress_writes_atomically_and_a_failure_leaves_no_file(tmp_path, monkeypatch, capsys):
    import codecx.eval.checkpoint as checkpoint
    from codecx.cli import main as cli_main

    ckpt, _ = _ckpt(tmp_path / "ok.ckpt")
    img, out = _png(tmp_path / "x.png"), tmp_path / "out" / "x.cdcx"
    real_fsync = os.fsync

    def full(fd):  # the data reach the disk at fsync: where a full disk (or NFS quota) shows
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    assert cli_main(["compress", str(img), "-c", str(ckpt), "-o", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and "no space left on device" in line and "no partial x.cdcx is left behind" in line
    assert list(out.parent.iterdir()) == []  # no 0-byte file, no temp file
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert cli_main(["compress", str(img), "-c", str(ckpt), "-o", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["x.cdcx"] and out.stat().st_size > 20
    capsys.readouterr()
    out.parent.chmod(0o500)  # an unwritable folder: the message names the target, not the temp file
    try:
        if os.access(out.parent, os.W_OK):  # root writes anyway
            return
        assert cli_main(["compress", str(img), "-c", str(ckpt), "-o", str(out)]) == 1
        assert f"cannot write {out}" in _one_line(capsys.readouterr().err)
    finally:
        out.parent.chmod(0o700)


# ---------------------------------------------------------------- 8. small items
def test_resume_with_another_objective_is_refused_with_the_way_out(tmp_path):
    from codecx.eval.checkpoint import CorruptCheckpointError, check_same_objective, objective_changes

    old = {"lmbda": 0.0018, "distortion": {"_target_": "a.MSE"}, "reg": {}, "schedule": {"lr": 1e-3}}
    new = {"lmbda": 0.0035, "distortion": {"_target_": "a.MSSSIM"}, "reg": {}, "schedule": {"lr": 1e-4}}
    assert objective_changes(old, new) == ["lmbda=0.0018 -> 0.0035", "distortion._target_=a.MSE -> a.MSSSIM"]
    # a parameter a newer codecx added with its default is no change; the schedule is not the objective
    a = {"lmbda": 1.0, "reg": {"cse": {"_target_": "x.CSE", "alpha": 1.0}}, "schedule": {"lr": 1}}
    b = {"lmbda": 1.0, "reg": {"cse": {"_target_": "x.CSE", "alpha": 1.0, "new": 2}}, "schedule": {"lr": 2}}
    assert objective_changes(a, b) == []
    changes = objective_changes({"reg": {}}, {"reg": {"cse": {"_target_": "x.CSE"}}})
    assert changes == ["reg.cse._target_=unset -> x.CSE"]
    torch.save({"codecx_config": {"lmbda": 0.0018}, "state_dict": {}}, tmp_path / "last.ckpt")
    with pytest.raises(CorruptCheckpointError, match=r"this run changes the training objective \(lmbda=0.0018 -> "
                                                     r"0.0035\).*model.weights=.*resume=false"):
        check_same_objective(tmp_path / "last.ckpt", {"lmbda": 0.0035})
    check_same_objective(tmp_path / "last.ckpt", {"lmbda": 0.0018})


def _animated_gif(path: Path, size=(64, 48)) -> Path:
    frames = [Image.new("RGB", size, c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path


def test_an_animated_gif_codes_its_first_frame_with_a_warning(tmp_path):
    from codecx.data import list_images, read_rgb

    gif = _animated_gif(tmp_path / "anim.gif")
    assert list_images(tmp_path) == [gif]  # no longer ignored
    with pytest.warns(UserWarning, match=r"anim.gif: an animated image \(3 frames\); only its first frame is used"):
        arr = read_rgb(gif)
    assert arr.shape == (48, 64, 3) and arr[0, 0, 0] > 200 and arr[0, 0, 1] < 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file
        read_rgb(gif)


@pytest.mark.medium
def test_eval_py_counts_skipped_images_codes_gifs_and_refuses_nan_checkpoints(tiny_ckpt, tmp_path):
    d = tmp_path / "images"
    _png(d / "a.png", 96, 64)
    _animated_gif(d / "anim.gif", (96, 64))
    _png(d / "tiny.png", 8, 8)        # smaller than the stride
    _png(d / "big.png", 256, 256)     # over max_pixels
    cmd = [sys.executable, str(ROOT / "eval.py"), f"ckpt={tiny_ckpt}", "data=folder", f"data.val_dir={d}",
           "max_pixels=20000", "progress=false", "threads=1"]
    r = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 image(s) (2 of 4 skipped, see the warnings)" in r.stdout
    for text in ("anim.gif: an animated image (3 frames)", "tiny.png (8x8)", "big.png (256x256)"):
        assert text in r.stderr
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["images"] == [2] and "2 image(s)" in res["description"]
    # a diverged checkpoint: one line naming the tensor (the coder is never reached)
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["state_dict"]["codec.backbone.g_a.0.weight"].view(-1)[0] = NAN
    torch.save(ckpt, tmp_path / "nan.ckpt")
    cmd[2] = f"ckpt={tmp_path / 'nan.ckpt'}"
    r = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'eval_nan'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("codecx eval: error: checkpoint") and "codec.backbone.g_a.0.weight" in line


# ---------------------------------------------------------------- 9. the submitit (SLURM) launcher
@pytest.mark.slow
def test_submitit_local_sweep_and_a_preempted_job_resumes_from_its_checkpoint(tmp_path):
    """hydra/launcher=submitit_local: the SLURM code path (submitit pickles each job, runs it in its
    own process, signals preemption with SIGUSR2 and requeues it) without a cluster."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", *TINY,
           "trainer.max_steps=16", "checkpoint.every_n_steps=4", "eval.every_n_steps=0",
           "+logger.flush_logs_every_n_steps=1", "lmbda=0.0018,0.0067", f"hydra.sweep.dir={sweep}"]
    p = subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))

    def job(lmbda: str):
        return next((d.parent.parent for d in sweep.rglob(".hydra/overrides.yaml")
                     if f"lmbda={lmbda}" in d.parent.parent.name), None)

    def steps(lmbda: str):
        j = job(lmbda)
        return [s for s, _ in logged(j)] if j is not None else []

    _wait(p, lambda: max(steps("0.0018"), default=-1) >= 6, "logged step 6 of the first job", 1500)
    # preempt the job of lmbda=0.0018 the way submitit does (its local controller before the time
    # limit; on SLURM, --signal before preemption or the limit): SIGUSR2 to the job's task process
    target = next((t for t in _submitit_tasks(sweep) if "lmbda=0.0018" in _task_log(sweep, t)), None)
    assert target is not None, _submitit_tasks(sweep)
    os.kill(target, signal.SIGUSR2)
    out, err = p.communicate(timeout=1800)
    assert p.returncode == 0, (out[-2000:], err[-3000:])
    assert (sweep / "report.md").is_file()
    for lmbda in ("0.0018", "0.0067"):
        j = job(lmbda)
        assert torch.load(j / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
        assert (j / "results.json").is_file()
    logs = "".join(f.read_text(errors="replace") for f in sorted((sweep / ".submitit").rglob("*_log.*")))
    m = re.search(r"codecx: preempted \(SIGUSR2\) at step (\d+): .* saved at this step; submitit requeues", logs)
    assert m, logs[-3000:]
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs  # submitit's own handler ran
    # the preempted job resumed from the step it was stopped at: every step logged once
    s = steps("0.0018")
    assert sorted(s) == list(range(16)) and len(s) == 16, s
    assert len(list(job("0.0018").glob("csv/version_*"))) == 2  # two runs of the job: before and after


def _submitit_tasks(sweep: Path):
    """pids of the submitit task processes (submitit.core._submit) of the jobs of `sweep`."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"submitit.core._submit" in cmd and str(sweep).encode() in cmd:
                out.append(int(proc.name))
    return out


def _task_log(sweep: Path, pid: int) -> str:
    """The stdout log of a submitit task (its folder is named after the job id: the controller's pid)."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return ""
    return "".join(f.read_text(errors="replace") for f in (sweep / ".submitit").glob(f"{ppid}/*.out"))
