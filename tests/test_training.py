"""Training with the real Lightning Trainer and the real `python train.py`."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from codecx.lit import LitCodec, Schedule
from codecx.models import BACKBONES
from codecx.regularizers import NoRegularizer
from conftest import TINY, run_train, tiny_codec


def _loader(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, size, size, generator=g)
    imgs = torch.nn.functional.avg_pool2d(imgs, 5, 1, 2)  # some spatial correlation
    return DataLoader(list(imgs), batch_size=2, shuffle=False)


def _trainer(max_steps, **kw):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kw)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_one_step_every_backbone(name):
    pl.seed_everything(0)
    module = LitCodec(tiny_codec(name), NoRegularizer(), lmbda=0.01)
    before = [p.detach().clone() for p in module.codec.parameters()]
    trainer = _trainer(1)
    trainer.fit(module, _loader(2))
    assert trainer.global_step == 1  # aux steps do not count
    changed = sum(not torch.equal(a, b) for a, b in zip(before, module.codec.parameters()))
    assert changed > 0


@pytest.mark.parametrize("quantizer", ["noise", "ste", "mixed"])
def test_loss_decreases(quantizer):
    pl.seed_everything(0)
    module = LitCodec(tiny_codec("mbt_mean", quantizer), NoRegularizer(), lmbda=0.01,
                      schedule=Schedule(lr=3e-3, scheduler="constant"))
    x = next(iter(_loader(2)))
    module.eval()
    with torch.no_grad():
        from codecx.losses import rate_distortion
        first = rate_distortion(x, module.codec(x), 0.01)["loss"].item()
    trainer = _trainer(30)
    trainer.fit(module, DataLoader([x[0], x[1]], batch_size=2))
    module.eval()
    with torch.no_grad():
        last = rate_distortion(x, module.codec(x), 0.01)["loss"].item()
    assert trainer.global_step == 30
    assert last < 0.7 * first


def test_group_lr_gives_a_group_its_own_rate_under_the_schedule():
    """schedule.group_lr: the named codec group gets its own lr, scaled by the codec schedule."""
    module = LitCodec(tiny_codec(), NoRegularizer(), lmbda=0.01,
                      schedule=Schedule(lr=1e-4, scheduler="multistep", milestones=[1], gamma=0.5,
                                        group_lr={"g_s": 1e-2}))
    module.trainer = type("T", (), {"max_steps": 3})()  # configure_optimizers reads max_steps
    opts, schs = module.configure_optimizers()
    codec_opt = opts[0]
    by_name = {g["name"]: g for g in codec_opt.param_groups}
    g_s = {id(p) for p in module.codec.parameter_groups()["g_s"]}
    assert {id(p) for p in by_name["g_s"]["params"]} == g_s
    assert not g_s & {id(p) for p in by_name["codec"]["params"]}
    quantiles = {id(p) for ph in module.phases for p in ph.params}
    assert not quantiles & {id(p) for g in codec_opt.param_groups for p in g["params"]}
    assert (by_name["codec"]["lr"], by_name["g_s"]["lr"]) == (1e-4, 1e-2)
    codec_opt.step()
    schs[0]["scheduler"].step()  # the milestone halves every group
    assert (by_name["codec"]["lr"], by_name["g_s"]["lr"]) == (5e-5, 5e-3)
    from codecx.lit.loggers import learning_rates
    assert learning_rates([codec_opt], ["codec"]) == {"train/lr_codec": 5e-5, "train/lr_codec_g_s": 5e-3}
    with pytest.raises(ValueError, match="group_lr: unknown parameter group.*'gs'"):
        Schedule(group_lr={"gs": 1e-3}).codec_optimizer([], module.codec.parameter_groups())
    with pytest.raises(ValueError, match="group_lr.g_s=0.0"):
        Schedule(group_lr={"g_s": 0})


def test_aux_phase_fits_quantiles():
    pl.seed_everything(0)
    module = LitCodec(tiny_codec(), lmbda=0.01, schedule=Schedule(aux_lr=1e-2))
    aux0 = module.codec.backbone.aux_loss().item()
    _trainer(20).fit(module, _loader(2))
    assert module.codec.backbone.aux_loss().item() < aux0


def test_cosine_schedule_warms_up_and_decays():
    from codecx.lit.schedule import Schedule

    s = Schedule(scheduler="cosine", lr=1.0, warmup_steps=10, min_lr=0.1)
    opt = s.codec_optimizer([torch.nn.Parameter(torch.zeros(1))])
    sch = s.lr_scheduler(opt, max_steps=110)["scheduler"]
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def _metrics(run_dir: Path):
    rows = []
    for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(open(f)))
    return rows


@pytest.mark.medium  # runs train.py (a subprocess)
def test_train_py_runs_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}", "checkpoint.every_n_steps=1", "checkpoint.keep_steps=[1,3]"]
    r = run_train([*args, "trainer.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint:" in r.stdout and "PSNR" in r.stdout
    assert re.search(r"bpp [0-9.]+ \(estimate [0-9.]+\)", r.stdout)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["codecx_config"]["model"]["name"] == "mbt_mean"
    # the checkpoint carries CDF tables (update(force=True) before writing)
    assert ckpt["state_dict"]["codec.backbone.gaussian_conditional._quantized_cdf"].numel() > 0
    # the same command with more steps resumes from last.ckpt
    r = run_train([*args, "trainer.max_steps=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr + r.stdout
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    steps = [int(row["step"]) for row in _metrics(run_dir) if row.get("train/loss")]
    assert steps == [0, 1, 2, 3]
    # checkpoint.keep_steps: those steps' checkpoints are kept beside last.ckpt
    for k in (1, 3):
        assert torch.load(run_dir / "checkpoints" / f"step={k}.ckpt", map_location="cpu",
                          weights_only=False)["global_step"] == k


def _resume_after(tmp_path, damage) -> str:
    """Train one step, let `damage` change the checkpoint dict, resume: the resume must exit 1
    with one line and no traceback, leaving last.ckpt as it was; returns that line."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}"]
    r = run_train([*args, "trainer.max_steps=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    damage(ckpt)
    torch.save(ckpt, last)
    before = last.read_bytes()
    r = run_train([*args, "trainer.max_steps=2"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert last.read_bytes() == before
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"codecx: error: cannot resume from {last}")
    return err


@pytest.mark.medium  # runs train.py (a subprocess)
def test_resume_with_mismatched_training_state_names_the_way_out(tmp_path):
    """A last.ckpt whose optimizer state does not fit this run (another codecx version) stops
    with one line naming the checkpoint and the ways out, and leaves the checkpoint as it was."""
    def damage(ckpt):
        ckpt["optimizer_states"][0]["param_groups"] = []  # not the optimizer this run builds
    err = _resume_after(tmp_path, damage)
    assert "training state does not fit" in err and "resume=false" in err and "model.weights=" in err


@pytest.mark.medium  # runs train.py (a subprocess)
def test_resume_with_another_model_names_the_way_out(tmp_path):
    """A last.ckpt of another backbone size stops with one line saying the model does not fit
    (and not advising model.weights=, which would fail the same way)."""
    def damage(ckpt):
        key = next(k for k in ckpt["state_dict"] if k.endswith("g_a.0.weight"))
        ckpt["state_dict"][key] = torch.zeros(1, *ckpt["state_dict"][key].shape[1:])  # another N
    err = _resume_after(tmp_path, damage)
    assert "its model does not fit" in err and "resume=false" in err and "model.weights=" not in err


@pytest.mark.medium  # runs train.py (a subprocess)
def test_checkpoint_loads_for_inference(tmp_path):
    """A training checkpoint rebuilds a codec that codes exactly (CDF buffers resized)."""
    from codecx.lit.module import resize_cdf_buffers

    run_dir = tmp_path / "run"
    r = run_train([*TINY, f"hydra.run.dir={run_dir}", "trainer.max_steps=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module = LitCodec(tiny_codec(), lmbda=0.01)
    resize_cdf_buffers(module, ckpt["state_dict"])
    module.load_state_dict(ckpt["state_dict"])
    codec = module.codec.eval()
    x = torch.rand(1, 3, 64, 64)
    enc = codec.compress(x)
    out = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
    assert torch.equal(out, codec(x).x_hat.clamp(0, 1))


@pytest.mark.medium  # runs train.py (a subprocess)
def test_cse_run_logs_source_entropy_and_resumes_every_state(tmp_path):
    """`train.py model=mbt_mean reg=cse alpha=1` logs the source entropy; last.ckpt holds the
    final step even when max_steps is not a multiple of the checkpoint interval, and the same
    command resumes the step, all three Adam states (codec, quantiles, q_theta) and the LR
    schedule."""
    run_dir = tmp_path / "run"
    args = [*TINY, "experiment=null", "model=mbt_mean", "reg=cse", "alpha=1", f"hydra.run.dir={run_dir}",
            "checkpoint.every_n_steps=2", "schedule.scheduler=multistep", "schedule.milestones=[4]",
            "eval.every_n_steps=0"]
    r = run_train([*args, "trainer.max_steps=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))
    r = run_train([*args, "trainer.max_steps=5"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr + r.stdout
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5
    opt_steps = [{int(s["step"]) for s in o["state"].values()} for o in ckpt["optimizer_states"]]
    assert opt_steps == [{5}, {5}, {5}]  # codec, entropy-bottleneck quantiles, q_theta
    sch = ckpt["lr_schedulers"][0]
    assert sch["last_epoch"] == 5 and sch["_last_lr"][0] == pytest.approx(1e-5)
    rows = _metrics(run_dir)
    bpp = [float(row["train/source_bpp"]) for row in rows if row.get("train/source_bpp")]
    assert len(bpp) == 5 and all(0 < b < 3 * 32 for b in bpp)  # bits per pixel of 3 8-bit channels
    shares = [float(row["train/reg_share"]) for row in rows if row.get("train/loss")]
    assert len(shares) == 5 and all(0 < x < 1 for x in shares)  # |reg| / (|R + lmbda D| + |reg|)
    val = [row for row in rows if row.get("val/loss")]
    assert val and all(float(row["val/reg_loss"]) < 0 for row in val)  # -alpha * source_bpp, apart
    assert all(float(row["val/loss"]) > 0 for row in val)  # R + lmbda D only
    assert [int(row["step"]) for row in rows if row.get("train/source_loss")] == [0, 1, 2, 3, 4]


@pytest.mark.medium  # runs train.py (a subprocess)
@pytest.mark.parametrize("logger, files", [("tensorboard", "tb/events.out.tfevents.*"),
                                           ("wandb", "wandb/offline-run-*/run-*.wandb")])
def test_other_loggers(logger, files, tmp_path):
    """logger=tensorboard writes event files; logger=wandb without credentials runs offline
    (nothing is sent) and the real-bitstream RD plot / reconstructions are logged there."""
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"), "WANDB_DIR": str(run_dir)}
    r = run_train([*TINY, f"logger={logger}", "trainer.max_steps=2", "eval.every_n_steps=1",
                   f"hydra.run.dir={run_dir}"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(run_dir.glob(files)), sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))[:40]
    if logger == "wandb":
        media = [p.name for p in run_dir.rglob("media/images/val/*")]
        assert any(n.startswith("rd_plot") for n in media) and any(n.startswith("reconstructions") for n in media)
        assert "W&B RD plot / reconstructions not logged" not in r.stderr
