"""Dashboards and sweeps (issue 15): the resolved config in W&B / TensorBoard, W&B run names
and groups, uint8 reconstruction panels (pixel content), learning rates, the `callbacks`
group, deterministic sweep folders (rerun = resume), bf16 training, classical anchors and
the sweep report's grouping by the configuration each run used."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from codecx.config import ConfigError
from codecx.lit.loggers import ZOOM, crop_box, flatten_config, reconstruction_panel
from codecx.train import CONF_DIR, build_callbacks
from conftest import TINY, run_train

OFFLINE = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_SILENT": "true"}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def _val_image_uint8() -> np.ndarray:
    """The first validation image of TINY's data settings, as the decoder's 8-bit pixels."""
    from codecx.data import ImageDataModule

    dm = ImageDataModule(source="sample", crop_size=64, val_crop_size=64, max_val_images=1)
    dm.setup("validate")
    x = dm.val_set[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _check_panel(panel: np.ndarray, original: np.ndarray, psnr: float | None = None) -> None:
    """A logged panel: uint8, the original top left, the decoded image top right (its PSNR
    against the original = the evaluation's `psnr`), each one's zoomed central crop below."""
    h, w, _ = original.shape
    assert panel.dtype == np.uint8 and panel.shape == (2 * h, 2 * w, 3)
    assert np.array_equal(panel[:h, :w], original)
    decoded = panel[:h, w:]
    top, left, ch, cw = crop_box(h, w)
    for col, img in ((0, original), (w, decoded)):
        crop = img[top:top + ch, left:left + cw]
        assert np.array_equal(panel[h:h + ch * ZOOM, col:col + cw * ZOOM], crop.repeat(ZOOM, 0).repeat(ZOOM, 1))
    if psnr is not None:  # the decoder's own pixels, not a float image cast to black
        mse = ((decoded.astype(float) - original.astype(float)) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / mse) == pytest.approx(psnr, abs=1e-3)


def _final_psnr(run_dir: Path) -> float:
    """PSNR of the final real-bitstream evaluation (one validation image) from results.json."""
    return json.loads((run_dir / "results.json").read_text())["results"]["psnr-rgb"][0]


# ---------------------------------------------------------------------- units
def test_reconstruction_panel_pixels():
    """uint8 side by side (W&B casts floats in [0,1] to black) with the zoomed central crops."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 52, generator=g)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    panel = reconstruction_panel(x, x_hat)
    a = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    b = (x_hat[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert panel.dtype == np.uint8 and panel.shape == (80, 104, 3)
    assert np.array_equal(panel[:40, :52], a) and np.array_equal(panel[:40, 52:], b)
    top, left, ch, cw = crop_box(40, 52)
    assert (top, left, ch, cw) == (15, 19, 10, 13)
    assert np.array_equal(panel[40:80, :52], a[15:25, 19:32].repeat(4, 0).repeat(4, 1))
    assert np.array_equal(panel[40:80, 52:], b[15:25, 19:32].repeat(4, 0).repeat(4, 1))
    with pytest.raises(ValueError, match="differ in size"):
        reconstruction_panel(x, x_hat[..., :50])


def test_flatten_config():
    flat = flatten_config({"lmbda": 0.01, "model": {"N": 8, "weights": None}, "reg": {},
                           "transform": {"lrp": {"hidden": 3}}, "schedule": {"milestones": [1, 2]},
                           "hydra": {"x": 1}, "callbacks": {"a": 1}})
    assert flat == {"lmbda": 0.01, "model.N": 8, "model.weights": "null", "reg": "{}",
                    "transform.lrp.hidden": 3, "schedule.milestones": "[1, 2]"}


def test_callbacks_group_is_instantiated():
    """callbacks: named _target_ nodes, all instantiated (+callbacks.x too), null drops one."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    from codecx.lit.loggers import LearningRates

    cbs = build_callbacks(_compose([]))
    assert [type(c) for c in cbs] == [LearningRates]
    cfg = _compose(["+callbacks.lr._target_=pytorch_lightning.callbacks.LearningRateMonitor",
                    "+callbacks.lr.logging_interval=step", "callbacks.lr_monitor=null"])
    cbs = build_callbacks(cfg)
    assert [type(c) for c in cbs] == [LearningRateMonitor] and cbs[0].logging_interval == "step"
    assert build_callbacks(_compose(["callbacks=none"])) == []
    with pytest.raises(ConfigError, match="callbacks.x: needs a _target_"):
        build_callbacks(_compose(["+callbacks.x.monitor=val/loss"]))
    with pytest.raises(ConfigError, match="callbacks.x: .* is not a Lightning Callback"):
        build_callbacks(_compose(["+callbacks.x._target_=collections.OrderedDict"]))
    with pytest.raises(ConfigError, match="unknown key.*callbacks.lr.bogus"):  # the pre-flight check
        from codecx.config import check_targets
        from codecx.config.check import TARGET_GROUPS

        check_targets(_compose(["+callbacks.lr._target_=pytorch_lightning.callbacks.LearningRateMonitor",
                                "+callbacks.lr.bogus=1"]), TARGET_GROUPS)


def test_sweep_name_is_deterministic():
    from codecx.config.schema import sweep_name

    a = sweep_name(["lmbda=0.01,0.02", "model.N=8", "resume=false", "hydra.sweep.dir=x"], ["resume"])
    b = sweep_name(["model.N=8", "lmbda=0.01,0.02"], ["resume"])
    assert a == b == "lmbda=0.01,0.02,model.N=8"
    assert sweep_name([], []) == "default" and "/" not in sweep_name(["data.train_dir=/a/b"], [])


def test_trainer_gpu_recipe():
    cfg = _compose(["trainer=gpu"])
    assert (cfg.trainer.accelerator, cfg.data.num_workers, cfg.data.pin_memory) == ("gpu", 8, True)
    assert _compose(["trainer=gpu", "data.num_workers=3"]).data.num_workers == 3
    assert _compose([]).data.pin_memory is None  # CPU recipe: pinned only when CUDA is there


def test_bf16_mixed_trains_on_cpu():
    """trainer.precision=bf16-mixed: one real training step of a tiny codec on CPU (autocast
    bf16); the weights change, stay float32 and finite."""
    import pytorch_lightning as pl

    from codecx.lit.module import LitCodec
    from conftest import tiny_codec

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"this torch has no CPU bf16 autocast: {e}")
    torch.manual_seed(0)
    module = LitCodec(tiny_codec())
    before = {k: v.clone() for k, v in module.codec.state_dict().items() if v.is_floating_point()}
    data = torch.utils.data.DataLoader(torch.rand(2, 3, 64, 64), batch_size=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    assert trainer.global_step == 1
    after = module.codec.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed and all(after[k].dtype == torch.float32 and torch.isfinite(after[k]).all() for k in before)


# ---------------------------------------------------------------------- real runs
def _wandb_records(path: Path):
    """The protobuf records of an offline W&B run file (LevelDB log: 32 KiB blocks of records
    with a 7-byte header crc32 / length / type, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        buf += payload
        if kind in (1, 4):  # FULL / LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _wandb_run(run_dir: Path):
    """(run record, config {key: value}, history keys) of the offline W&B run under `run_dir`."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))[:40]
    run, config, history = None, {}, set()
    for rec in _wandb_records(files[-1]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    return run, config, history


@pytest.mark.medium
def test_tensorboard_config_images_lr_and_extra_callback(tmp_path):
    """logger=tensorboard: the resolved config as hparams (an HParams session, started and ended,
    without Lightning's experiment record or hp_metric), uint8 reconstruction panels with the
    original's pixels, the RD plot and RD points at every evaluation as with W&B, val/* and
    train/lr_* scalars; +callbacks.x is instantiated and runs."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import plugin_data_pb2
    from PIL import Image

    run_dir, extra = tmp_path / "run", tmp_path / "extra"
    r = run_train([*TINY, "logger=tensorboard", "trainer.max_steps=2", "eval.every_n_steps=1",
                   "lmbda=0.013", "+callbacks.every._target_=pytorch_lightning.callbacks.ModelCheckpoint",
                   f"+callbacks.every.dirpath={extra}", "+callbacks.every.every_n_train_steps=1",
                   "+callbacks.every.save_top_k=-1", f"hydra.run.dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(extra.glob("*.ckpt"))) == 2  # the extra callback ran at steps 1 and 2
    hparams, images, scalars, records, rd_plots, rd_points = {}, [], set(), [], [], []
    for f in run_dir.glob("tb/events.out.tfevents.*"):
        for event in map(Event.FromString, RawEventFileLoader(str(f)).Load()):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    d = plugin_data_pb2.HParamsPluginData()
                    d.ParseFromString(v.metadata.plugin_data.content)
                    records.append(d.WhichOneof("data"))
                    for k, val in d.session_start_info.hparams.items():
                        hparams[k] = val.number_value if val.HasField("number_value") else val.string_value
                elif v.tag.startswith("val/reconstructions/"):
                    images.append(np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string))))
                elif v.tag == "val/rd_plot":
                    rd_plots.append(Image.open(io.BytesIO(v.image.encoded_image_string)).size)
                elif v.tag.startswith("val/rd_points"):
                    rd_points.append(event.step)
                else:
                    scalars.add(v.tag)
    # one session per run, no experiment record: the HParams view unites a sweep's runs
    assert records == ["session_start_info", "session_end_info"] and "hp_metric" not in scalars
    assert hparams["lmbda"] == pytest.approx(0.013) and hparams["model.N"] == 8
    assert hparams["model._target_"] == "codecx.models.backbones.MbtMean"
    assert hparams["quantizer._target_"].endswith("MixedQuantizer") and hparams["seed"] == 1  # main job
    assert hparams["data.crop_size"] == 64 and hparams["trainer.max_steps"] == 2
    assert {"train/lr_codec", "train/lr_aux", "val/psnr", "val/bpp"} <= scalars
    assert len(images) == 2  # step 1 and the final evaluation
    assert len(rd_plots) == 2 and all(w > 400 and h > 300 for w, h in rd_plots) and rd_points == [1, 2]
    original = _val_image_uint8()
    for panel in images:
        _check_panel(panel, original)
    _check_panel(images[-1], original, _final_psnr(run_dir))


@pytest.mark.medium
def test_wandb_sweep_names_and_resume(tmp_path):
    """A multirun with logger=wandb (offline): the sweep folder is named after the command's
    overrides, each W&B run is named after its run folder, grouped by the sweep folder, job
    type train, with the resolved config; the reconstructions are the original's pixels; the
    same command again resumes every job from its last.ckpt in the same folder."""
    from PIL import Image

    args = ["-m", *TINY, "logger=wandb", "trainer.max_steps=1", "lmbda=0.02", "sweep_report.enabled=false"]
    env = {**OFFLINE, "WANDB_DIR": str(tmp_path / "wandb"), "NETRC": str(tmp_path / "no-netrc")}
    r = run_train(args, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = list((tmp_path / "runs" / "sweep").iterdir())
    assert len(sweeps) == 1 and "lmbda=0.02" in sweeps[0].name and "model.N=8" in sweeps[0].name
    (run_dir,) = [p for p in sweeps[0].iterdir() if p.is_dir()]
    run, config, history = _wandb_run(run_dir)
    assert run.display_name == run_dir.name and run.run_group == sweeps[0].name and run.job_type == "train"
    assert config["lmbda"] == 0.02 and config["model.N"] == 8 and config["model.M"] == 12
    assert config["reg"] == "{}" and config["schedule.lr"] > 0 and config["data.source"] == "sample"
    assert {"train/lr_codec", "train/lr_aux"} <= history
    pngs = sorted(run_dir.glob("wandb/offline-run-*/files/media/images/val/reconstructions_*.png"),
                  key=lambda p: int(p.name.split("_")[1]))  # reconstructions_<W&B step>_<hash>.png
    assert pngs
    _check_panel(np.asarray(Image.open(pngs[-1]).convert("RGB")), _val_image_uint8(), _final_psnr(run_dir))
    r = run_train(args, cwd=tmp_path, env=env)  # the same command: the same folder, resumed
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "runs" / "sweep").iterdir()) == sweeps
    assert "resuming from" in r.stdout + r.stderr and str(run_dir / "checkpoints" / "last.ckpt") in r.stdout + r.stderr


# ---------------------------------------------------------------------- report and anchors
def _config_run(root: Path, name: str, reg: str, alpha: float, lmbda: float, bpp: float, psnr: float,
                step: int = 100, max_steps: int = 100, overrides=()) -> Path:
    """A run folder as train.py -m leaves it: .hydra/config.yaml (unresolved, as Hydra saves
    it), hydra.yaml's group choices, overrides.yaml, and the final results.json at `step`."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    reg_node = "{}" if reg == "none" else "\n  cse:\n    _target_: codecx.regularizers.cse.CSE\n    alpha: ${alpha}"
    (d / ".hydra" / "config.yaml").write_text(
        f"lmbda: {lmbda}\nalpha: {alpha}\nseed: 1\n"
        "model:\n  _target_: codecx.models.backbones.MbtMean\n  name: mbt_mean\n  N: 8\n  M: 12\n"
        f"reg: {reg_node}\n"
        f"trainer:\n  max_steps: {max_steps}\n  enable_progress_bar: false\n"
        "logger:\n  save_dir: ${hydra:runtime.output_dir}\n")
    (d / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    choices:\n      reg: {reg}\n      model: mbt_mean\n")
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "results.json").write_text(json.dumps(
        {"name": name, "step": step, "results": {"bpp": [bpp], "psnr-rgb": [psnr], "ms-ssim": [None]}}))
    return d


def test_report_groups_by_used_config_flags_incomplete_and_anchor(tmp_path, capsys):
    """Groups follow the configuration each run used: alpha=1 given to reg=none runs changes
    nothing, so it neither splits nor names their group (reg.cse.alpha=${alpha} does, for
    cse). A killed run (step 50 of 100) is flagged and left out of the BD figures unless
    --include-incomplete. --anchor draws a packaged curve and adds BD columns against it."""
    import csv

    from codecx.cli import main
    from codecx.metrics.anchors import load_anchor
    from codecx.metrics.bdrate import bd_methods

    root = tmp_path / "sweep"
    hyper, mbt = load_anchor("bmshj2018-hyperprior")["results"], load_anchor("mbt2018-mean")["results"]
    for i, (b, p) in enumerate(zip(hyper["bpp"], hyper["psnr-rgb"])):  # alpha given or not: no effect
        alpha = 1 if i % 2 else 0
        _config_run(root, f"none{i}", "none", alpha, i, b, p, overrides=["reg=none", f"alpha={alpha}", f"lmbda={i}"])
    for i, (b, p) in enumerate(zip(mbt["bpp"], mbt["psnr-rgb"])):
        _config_run(root, f"cse{i}", "cse", 1, i, b, p, overrides=["reg=cse", "alpha=1", f"lmbda={i}"])
    _config_run(root, "cse_killed", "cse", 1, 99, 0.5, 20.0, step=50, overrides=["reg=cse", "alpha=1", "lmbda=99"])
    assert main(["report", str(root), "--baseline", "reg=none", "--anchor", "bmshj2018-hyperprior",
                 "--no-progress"]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(root / "report.csv"))}
    assert set(rows) == {"reg=none (baseline)", "reg=cse"}
    cse = rows["reg=cse"]
    assert float(cse["bd_rate_pchip"]) == pytest.approx(-6.83, abs=0.01)  # without the killed run
    assert "1 incomplete run(s) left out" in cse["notes"] and "cse_killed (step 50 of 100)" in cse["notes"]
    assert cse["runs"] == f"{len(mbt['bpp'])} (+1 incomplete)"
    want = bd_methods(load_anchor("bmshj2018-hyperprior"), load_anchor("mbt2018-mean"), "psnr-rgb", "pchip")[0]
    assert float(cse["anchor_bd_rate"]) == pytest.approx(want["pchip"].bd_rate, abs=0.01)
    assert float(rows["reg=none (baseline)"]["anchor_bd_rate"]) == pytest.approx(0, abs=0.01)
    md = (root / "report.md").read_text()
    assert "BD-rate % vs bmshj2018-hyperprior" in md and "50 of 100 **incomplete**" in md
    assert main(["report", str(root), "--baseline", "reg=none", "--include-incomplete", "--no-progress"]) == 0
    cse = {r["group"]: r for r in csv.DictReader(open(root / "report.csv"))}["reg=cse"]
    assert cse["runs"] == str(len(mbt["bpp"]) + 1) and "incomplete run(s) included" in cse["notes"]
    assert cse["bd_rate_pchip"] == "" or float(cse["bd_rate_pchip"]) != pytest.approx(-6.83, abs=0.01)


def test_report_labels_a_varying_knob(tmp_path):
    """reg=cse at two alphas: the groups are named by the knob the user sets (alpha=...)."""
    from codecx.eval.runs import find_runs, group_runs, load_run_config

    root = tmp_path / "sweep"
    for alpha in (0.5, 2):
        for i in range(2):
            _config_run(root, f"a{alpha}_{i}", "cse", alpha, i, 0.1 + i, 30 + i)
    _config_run(root, "none0", "none", 0, 0, 0.1, 30)
    runs = find_runs(root)
    for r in runs:
        load_run_config(r)
    assert sorted(group_runs(runs)) == ["reg=cse,alpha=0.5", "reg=cse,alpha=2", "reg=none"]


def test_find_runs_follows_symlinked_run_folders(tmp_path):
    """A sweep assembled from links to runs elsewhere (a shared control): find_runs finds the
    linked run, and a symlink loop is visited once."""
    from codecx.eval.runs import find_runs

    _config_run(tmp_path / "elsewhere", "none0", "none", 0, 0, 0.1, 30)
    root = tmp_path / "sweep"
    _config_run(root, "cse0", "cse", 0.5, 0, 0.1, 30)
    (root / "none0").symlink_to(tmp_path / "elsewhere" / "none0", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    runs = find_runs(root)
    assert [r.dir.name for r in runs] == ["cse0", "none0"]


def test_anchors_verb_feeds_plot_report_and_eval_anchor(tiny_images, tmp_path, capsys):
    """`codecx anchors DIR --codec jpeg,webp`: CompressAI-layout JSON with bpp from the encoded
    file sizes, read back by codecx plot, bdrate, and resolve_anchor (eval.anchor=PATH)."""
    import io

    from PIL import Image

    from codecx.cli import main, read_image
    from codecx.metrics.anchors import resolve_anchor

    out = tmp_path / "a.json"
    assert main(["anchors", str(tiny_images), "--codec", "jpeg,webp", "--qualities", "10,50,90", "-o", str(out)]) == 0
    jpeg = json.loads((tmp_path / "a-jpeg.json").read_text())
    webp = json.loads((tmp_path / "a-webp.json").read_text())
    assert jpeg["name"] == "jpeg" and webp["name"] == "webp" and jpeg["results"]["quality"] == [10, 50, 90]
    files = sorted(p for p in tiny_images.iterdir() if p.suffix == ".png")
    sizes = []  # bpp: 8 * bytes of Pillow's file / pixels, the mean over the images
    for p in files:
        x = read_image(p)
        arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=50)
        sizes.append(8 * buf.tell() / (arr.shape[0] * arr.shape[1]))
    assert jpeg["results"]["bpp"][1] == pytest.approx(np.mean(sizes), rel=1e-9)
    assert resolve_anchor(str(tmp_path / "a-jpeg.json"))["results"]["bpp"] == jpeg["results"]["bpp"]
    assert main(["plot", str(tmp_path / "a-webp.json"), "--anchor", str(tmp_path / "a-jpeg.json"),
                 "-o", str(tmp_path / "rd.png")]) == 0
    assert main(["bdrate", str(tmp_path / "a-jpeg.json"), str(tmp_path / "a-webp.json")]) == 0
    assert main(["anchors", str(tiny_images), "--codec", "jxl"]) == 1
    assert "choose from jpeg, webp" in capsys.readouterr().err
    assert main(["anchors", str(tmp_path / "nothing"), "-o", str(out)]) == 1
    assert "no such folder" in capsys.readouterr().err
