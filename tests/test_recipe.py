"""The released MS-ILLM training recipe (issue 28 item 3): auxiliary-phase gradient clipping,
gradient accumulation under the two-phase manual step, the released learning-rate shape and
the labeler's schedule (the shallow CNN analysis' slope: tests/test_shallow.py)."""
from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from codecx.lit import LitCodec, Schedule
from codecx.lit.schedule import step_scheduler
from codecx.regularizers.base import AuxPhase, Regularizer
from conftest import tiny_codec


def _images(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)


def _fit(module, images, batch_size, max_steps):
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(list(images), batch_size=batch_size, shuffle=False))
    return trainer


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from codecx.train import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ---------------------------------------------------------------- auxiliary-phase clipping
class _HugeGradient(Regularizer):
    """A regularizer whose phase "huge" has a gradient of norm 1e6 * sqrt(n)."""

    def __init__(self, clip=1.0):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(16))
        self.clip = clip

    def aux_phases(self):
        return [AuxPhase("huge", [self.p], lambda x, out: ((1e6 * self.p).sum() + 0 * x.mean(), {}),
                         clip_max_norm=self.clip)]


@pytest.mark.parametrize("phase_default, override, expected", [
    (1.0, None, 1.0),                              # the phase's default clip
    (1.0, {"clip_max_norm": 0.5}, 0.5),            # schedule.phases.<name>.clip_max_norm
    (1.0, {"clip_max_norm": None}, 4e6),           # null: off
    (None, None, 4e6),                             # a phase without a default is not clipped
])
def test_aux_phase_gradient_is_clipped(phase_default, override, expected):
    """A phase's gradient of norm 4e6 is clipped to the phase's (or the schedule's) norm
    before its optimizer steps; the grads the step used are still in .grad afterwards."""
    reg = _HugeGradient(phase_default)
    schedule = Schedule(scheduler="constant", phases={"huge": override} if override else None)
    module = LitCodec(tiny_codec(), reg, lmbda=0.01, schedule=schedule)
    _fit(module, _images(2), 2, 1)
    assert torch.linalg.vector_norm(reg.p.grad).item() == pytest.approx(expected, rel=1e-5)
    assert reg.p.abs().max().item() <= 1.1e-3  # Adam's first step moves each element by ~lr


def test_gan_discriminator_phases_clip_at_one_by_default():
    """Both discriminators clip D's gradient at 1.0 (MS-ILLM's released GANCompressionModule),
    and the stage-2 recipes say so in schedule.phases.discriminator."""
    from codecx.regularizers.gan import PatchGANRegularizer

    reg = PatchGANRegularizer(channels=[8, 8, 8, 8], context_channels=4)
    reg.attach(tiny_codec())
    (phase,) = reg.aux_phases()
    assert phase.clip_max_norm == 1.0 and Schedule().phase_clip(phase) == 1.0
    assert Schedule(phases={"discriminator": {"clip_max_norm": 0}}).phase_clip(phase) is None
    for recipe in ("illm_stage2", "hific_stage2"):
        cfg = _compose(f"experiment={recipe}")
        assert cfg.schedule.phases.discriminator.clip_max_norm == 1.0
    with pytest.raises(ValueError, match="phases.discriminator.clip_max_norm=-1"):
        Schedule(phases={"discriminator": {"clip_max_norm": -1}})


# ---------------------------------------------------------------- gradient accumulation
def _grads_and_params(module):
    named = [(n, p) for n, p in module.named_parameters()]
    return ({n: p.grad.detach().clone() for n, p in named if p.grad is not None},
            {n: p.detach().clone() for n, p in named})


@pytest.mark.parametrize("clip", [None, 1.0])
def test_accumulation_equals_one_big_batch(clip):
    """k=2 batches of 4 give the same gradients and update as one batch of 8 (codec and the
    quantile phase; STE rounding and a factorized prior: nothing random in the step), and
    step the optimizers and schedulers once per k batches."""
    torch.manual_seed(0)
    codec = tiny_codec("bmshj_factorized", "ste")
    images = _images(8)

    def run(k, batch_size, steps):
        sched = Schedule(lr=1e-3, scheduler="multistep", milestones=[1, 2], gamma=0.5, clip_max_norm=clip)
        module = LitCodec(copy.deepcopy(codec), lmbda=0.01, schedule=sched, accumulate_grad_batches=k)
        trainer = _fit(module, images.repeat(steps, 1, 1, 1), batch_size, steps)
        return module, trainer

    big, t_big = run(1, 8, 1)
    acc, t_acc = run(2, 4, 1)
    assert t_big.global_step == t_acc.global_step == 1
    assert t_acc.fit_loop.epoch_loop.batch_progress.total.completed == 2
    g_big, p_big = _grads_and_params(big)
    g_acc, p_acc = _grads_and_params(acc)
    assert set(g_big) == set(g_acc) and any(".quantiles" in n for n in g_big)
    for n in g_big:
        torch.testing.assert_close(g_acc[n], g_big[n], rtol=1e-4, atol=1e-7, msg=n)
    for n in p_big:
        torch.testing.assert_close(p_acc[n], p_big[n], rtol=1e-5, atol=1e-6, msg=n)
    # the schedulers stepped once per optimizer step: lr x0.5 after step 1, not x0.25
    assert t_acc.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-4)
    # and three steps later the two runs still agree
    big3, _ = run(1, 8, 3)
    acc3, t3 = run(2, 4, 3)
    assert t3.global_step == 3 and t3.fit_loop.epoch_loop.batch_progress.total.completed == 6
    _, p3_big = _grads_and_params(big3)
    _, p3_acc = _grads_and_params(acc3)
    for n in p3_big:
        torch.testing.assert_close(p3_acc[n], p3_big[n], rtol=1e-4, atol=1e-6, msg=n)


def test_accumulate_grad_batches_through_train_py_config(tmp_path):
    """`trainer.accumulate_grad_batches` reaches LitCodec (Lightning, which refuses it under
    manual optimisation, never sees it); 0 is a one-line ConfigError; the MS-ILLM stage-1
    recipe runs 8 x 2 = the released 16 per step on the quarter cosine."""
    from codecx.config import ConfigError
    from codecx.train import _check_numbers, build_module, build_trainer

    cfg = _compose("model.N=8", "model.M=12", "trainer.accumulate_grad_batches=3", "trainer.max_steps=1",
                   "eval.every_n_steps=0", "~logger")
    module = build_module(cfg)
    assert module.accumulate_grad_batches == 3
    trainer = build_trainer(cfg, tmp_path)
    trainer.fit(module, DataLoader(list(_images(6)), batch_size=2))
    assert trainer.global_step == 1 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3
    bad = _compose("trainer.accumulate_grad_batches=0")
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=0: must be an integer >= 1"):
        _check_numbers(bad)
    with pytest.raises(ValueError, match="accumulate_grad_batches=0"):
        LitCodec(tiny_codec(), accumulate_grad_batches=0)
    for target in ("0.07", "0.14", "0.3"):
        cfg = _compose(f"experiment=illm_{target}")
        assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 16
        assert cfg.schedule.scheduler == "quarter_cosine" and cfg.schedule.warmup_steps == 10000
        assert dict(cfg.schedule.phases.aux) == {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01}


# ---------------------------------------------------------------- the released LR shape
def _lrs(sch_dict, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch_dict["scheduler"].step()
    return out


def test_quarter_cosine_is_the_released_shape():
    """scheduler=quarter_cosine: a ramp t/warmup from 0, then cos((t - warmup)/T * pi/2),
    floored at 1e-12 (NeuralCompression's RampCosineLRSchedule), at known steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    lrs = _lrs(step_scheduler(opt, "quarter_cosine", max_steps=100, warmup_steps=10), opt, 101)
    assert lrs[0] == pytest.approx(2e-12)
    assert lrs[5] == pytest.approx(1.0) and lrs[10] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(2.0 * math.cos(math.pi / 4))
    assert lrs[100] == pytest.approx(2.0 * math.cos(0.9 * math.pi / 2))  # not 0 at T
    # min_lr lifts the floor: min_lr + (lr - min_lr) * factor
    opt = torch.optim.SGD([p], lr=2.0)
    lrs = _lrs(step_scheduler(opt, "quarter_cosine", 100, warmup_steps=10, min_lr=0.5), opt, 61)
    assert lrs[60] == pytest.approx(0.5 + 1.5 * math.cos(math.pi / 4))


@pytest.mark.medium  # several seconds (NeuralCompression's schedule)
def test_quarter_cosine_equals_neuralcompression():
    """Step for step equal to the reference's RampCosineLRSchedule (the illm_0.14 recipe at 1/100 scale)."""
    nc_optim = pytest.importorskip("neuralcompression.optim")
    cfg = _compose("experiment=illm_0.14", "schedule.warmup_steps=100")
    from hydra.utils import instantiate

    ours_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    ours = instantiate(cfg.schedule).lr_scheduler(ours_opt, 10000)["scheduler"]
    ref = nc_optim.RampCosineLRSchedule(ref_opt, num_ramp_steps=100, num_max_steps=10000)
    for step in range(10001):
        if step in (0, 1, 50, 99, 100, 101, 5000, 9999, 10000):
            assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12,
                                                                  abs=1e-20), step
        ours_opt.step(), ref_opt.step()
        ours.step(), ref.step()


def test_half_cosine_unchanged_and_bad_names():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = _lrs(step_scheduler(opt, "cosine", 110, warmup_steps=10), opt, 110)
    assert lrs[0] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="schedule.scheduler='quarter'"):
        Schedule(scheduler="quarter")
    with pytest.raises(ValueError, match="phases.discriminator.scheduler='x'.*quarter_cosine"):
        Schedule(phases={"discriminator": {"scheduler": "x"}})
    s = Schedule(phases={"discriminator": {"scheduler": "quarter_cosine", "warmup_steps": 4}})
    ph = AuxPhase("discriminator", [p], lambda x, out: (p.sum(), {}), lr=1.0)
    _, sch = s.phase_optimizer(ph, 8)
    assert sch["scheduler"].get_last_lr()[0] == pytest.approx(1e-12)


# ---------------------------------------------------------------- the labeler's schedule
def test_labeler_runs_on_the_autoencoders_schedule():
    """codecx train-labeler: a ramp over 1% of the steps (MS-ILLM's 10k of 1M) then the quarter
    cosine, as the autoencoder (paper A.2); --schedule cosine keeps a half cosine."""
    from codecx.regularizers.labeler import labeler_lr_schedule, main

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=3e-4)
    lrs = _lrs({"scheduler": labeler_lr_schedule(opt, 1000)}, opt, 1001)
    assert lrs[0] == pytest.approx(3e-16) and lrs[5] == pytest.approx(1.5e-4) and lrs[10] == pytest.approx(3e-4)
    assert lrs[505] == pytest.approx(3e-4 * math.cos(0.495 * math.pi / 2))
    assert lrs[1000] == pytest.approx(3e-4 * math.cos(0.99 * math.pi / 2))
    opt = torch.optim.AdamW([p], lr=1.0)
    lrs = _lrs({"scheduler": labeler_lr_schedule(opt, 100, warmup_steps=0, scheduler="cosine")}, opt, 51)
    assert lrs[0] == pytest.approx(1.0) and lrs[50] == pytest.approx(0.5)
    with pytest.raises(SystemExit):
        main(["--data", "x", "--out", "y", "--schedule", "constant"])
