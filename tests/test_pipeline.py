"""The one pipeline walk, its hook points, loss composition and training stages (DESIGN.md)."""
from __future__ import annotations


import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from codecx.inference.base import EncoderRefiner
from codecx.lit import LitCodec, Schedule
from codecx.lit.module import NonFiniteLossError
from codecx.losses import MSSSIM
from codecx.models import Codec, build_backbone
from codecx.train import CONF_DIR, build_module
from codecx.transforms.base import LatentTransform
from codecx.transforms.bias import ChannelBias
from conftest import tiny_codec


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)


def _trainer(max_steps, **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)


class _Penalty(LatentTransform):
    """A toy stage that adds a known loss term and a metric."""

    def forward(self, y_hat, state):
        if state.training:
            state.losses["penalty"] = 0.25 * y_hat.square().mean()
            state.metrics["penalty_metric"] = torch.tensor(3.0)
        return y_hat


class _Signal(LatentTransform):
    """A toy transform that signals a header option: the sign of the mean of y_hat."""

    in_training = False
    signals = True
    header_options = ("toy_sign",)  # the container refuses an option no stage declares

    def forward(self, y_hat, state):
        if state.encoder_side:
            state.options["toy_sign"] = int(y_hat.mean() >= 0)
        sign = 1.0 if state.options["toy_sign"] else -1.0
        return y_hat + 0.1 * sign


class _Zero(EncoderRefiner):
    """A toy refiner: moves y halfway to the means' grid (0 for this test), z unchanged."""

    def forward(self, x, codec, y, z, lmbda):
        assert lmbda == 0.01
        return 0.5 * y, z


def _coded(codec: Codec, x):
    codec.eval()
    codec.update(force=True)
    with torch.no_grad():
        ref = codec(x).x_hat.clamp(0, 1)
        enc = codec.compress(x)
        dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], enc["options"])
    return ref, dec, enc


@pytest.mark.parametrize("name", ["bmshj_factorized", "mbt_mean", "mbt"])
def test_transforms_and_refiners_round_trip(name):
    """Trainable + signalling transforms and a refiner: the decoder reproduces eval forward exactly."""
    torch.manual_seed(0)
    codec = tiny_codec(name)
    codec = Codec(codec.backbone, codec.quantizer, transforms=[ChannelBias(), _Signal()],
                  refiners=[_Zero()], lmbda=0.01)
    with torch.no_grad():
        codec.transforms[0].b.fill_(0.3)
    x = _batch(1, 48)
    ref, dec, enc = _coded(codec, x)
    assert torch.equal(ref, dec)
    assert enc["options"][0]["toy_sign"] in (0, 1)
    # the refiner ran at the encoder: y_hat differs from the unrefined codec's
    plain = Codec(codec.backbone, codec.quantizer, transforms=list(codec.transforms), lmbda=0.01).eval()
    with torch.no_grad():
        assert torch.allclose(0.5 * plain(x).y, codec(x).y)
    assert "transforms.0.b" in codec.state_dict()


def test_stage_losses_and_metrics_are_summed_and_logged(tmp_path):
    torch.manual_seed(0)
    base = tiny_codec()
    codec = Codec(base.backbone, base.quantizer, transforms=[_Penalty()])
    module = LitCodec(codec, None, lmbda=0.01)
    codec.train()
    x = _batch()
    out = codec(x)
    loss, terms, metrics = module.codec_loss(x, out)
    expected = terms["rate"] + 0.01 * terms["distortion"] + 0.25 * out.y_hat.square().mean()
    assert torch.allclose(loss, expected)
    assert set(terms) == {"rate", "distortion", "penalty"}
    trainer = _trainer(1, logger=pl.loggers.CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(module, DataLoader(list(x), batch_size=2))
    logged = trainer.logged_metrics
    assert "train/penalty" in logged and float(logged["train/penalty_metric"]) == 3.0


def test_training_stages_freeze_groups_and_skip_the_quantile_phase():
    torch.manual_seed(0)
    codec = tiny_codec()
    sched = Schedule(scheduler="constant", lr=1e-2, stages=[
        {"steps": 2, "trainable": ["g_s"]}, {"steps": None, "trainable": ["g_a", "g_s", "entropy"]}])
    module = LitCodec(codec, None, lmbda=0.01, schedule=sched)
    groups = codec.parameter_groups()
    snap = lambda: {k: [p.detach().clone() for p in v] for k, v in groups.items()}  # noqa: E731
    before = snap()
    _trainer(2).fit(module, DataLoader(list(_batch(4)), batch_size=2))
    after = snap()
    changed = {k: any(not torch.equal(a, b) for a, b in zip(before[k], after[k])) for k in groups if groups[k]}
    assert changed["g_s"] and not changed["g_a"] and not changed["h_a"] and not changed["entropy"]
    # stage 2 (from step 2 on): g_a and the quantiles train, h_a stays frozen
    module2 = LitCodec(codec, None, lmbda=0.01, schedule=sched)
    t = _trainer(4)
    t.fit(module2, DataLoader(list(_batch(8)), batch_size=2))
    final = snap()
    assert any(not torch.equal(a, b) for a, b in zip(after["g_a"], final["g_a"]))
    assert any(not torch.equal(a, b) for a, b in zip(after["entropy"], final["entropy"]))
    assert all(torch.equal(a, b) for a, b in zip(after["h_a"], final["h_a"]))


def test_stage_and_phase_settings_are_checked():
    with pytest.raises(ValueError, match="unknown parameter group"):
        LitCodec(tiny_codec(), None, schedule=Schedule(stages=[{"steps": 1, "trainable": ["decoder"]}]))
    with pytest.raises(ValueError, match="only the last stage"):
        Schedule(stages=[{"steps": None, "trainable": ["g_s"]}, {"steps": 2, "trainable": ["g_a"]}])
    with pytest.raises(ValueError, match="unknown key"):
        Schedule(phases={"aux": {"learning_rate": 1}})


def test_phase_optimizer_is_configurable():
    sched = Schedule(optimizer="adamw", weight_decay=5e-5,
                     phases={"aux": {"optimizer": "adamw", "lr": 3e-3, "scheduler": "cosine"}})
    module = LitCodec(tiny_codec(), None, schedule=sched)
    trainer = _trainer(1)
    trainer.fit(module, DataLoader(list(_batch()), batch_size=2))
    codec_opt, aux_opt = trainer.optimizers
    assert isinstance(codec_opt, torch.optim.AdamW) and codec_opt.param_groups[0]["weight_decay"] == 5e-5
    assert isinstance(aux_opt, torch.optim.AdamW)
    assert len(trainer.lr_scheduler_configs) == 2  # plateau (codec) + cosine (aux)


def test_non_finite_loss_names_the_step_and_term():
    module = LitCodec(tiny_codec(), None, lmbda=0.01)
    x = _batch()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss term .*distortion.* at step 0"):
        _trainer(1).fit(module, DataLoader(list(x), batch_size=2))


def test_ms_ssim_distortion():
    x = torch.rand(1, 3, 176, 176)
    d, m = MSSSIM()(x, x)
    assert abs(float(d)) < 1e-6 and float(m["ms_ssim"]) == pytest.approx(1.0)
    d2, _ = MSSSIM()(x, (x + 0.1 * torch.randn_like(x)).clamp(0, 1))
    assert float(d2) > 0.01


def test_config_groups_build_the_pipeline():
    """transform=[bias] distortion=ms_ssim reg=none through Hydra: the module has what was chosen."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model.N=8", "model.M=12", "transform=[bias]", "distortion=ms_ssim",
                                          "reg=none"])
    module = build_module(cfg)
    assert isinstance(module.distortion, MSSSIM) and len(module.regularizers) == 0
    assert isinstance(module.codec.transforms[0], ChannelBias)
    assert module.config["transform"]["bias"]["_target_"] == "codecx.transforms.bias.ChannelBias"
    assert "transforms" in module.codec.parameter_groups() and module.codec.parameter_groups()["transforms"]


def test_backbones_declare_strides():
    for name, stride, has_side in [("bmshj_factorized", 16, False), ("mbt_mean", 64, True)]:
        bb = build_backbone(name, N=8, M=12)
        assert (bb.stride, bb.latent_stride, bb.has_side) == (stride, 16, has_side)
        y, z = bb.latent_shapes(33, 70)
        assert y == ((64 if has_side else 48) // 16, (128 if has_side else 80) // 16)
        assert z == ((1, 2) if has_side else None)


def test_worked_example_bias_trains_with_the_codec():
    """docs/manual/extending.md: transform=bias is trained by the codec's optimizer."""
    torch.manual_seed(0)
    base = tiny_codec()
    codec = Codec(base.backbone, base.quantizer, transforms=[ChannelBias()])
    module = LitCodec(codec, None, lmbda=0.01, schedule=Schedule(scheduler="constant", lr=1e-2))
    _trainer(2).fit(module, DataLoader(list(_batch(4)), batch_size=2))
    assert float(codec.transforms[0].b.abs().sum()) > 0


def test_stage_switch_survives_resume(tmp_path):
    """Stopped after stage 0 and resumed from its checkpoint: the resumed run is in stage 1."""
    torch.manual_seed(0)
    sched = lambda: Schedule(scheduler="constant", lr=1e-2, stages=[  # noqa: E731
        {"steps": 2, "trainable": ["g_s"]}, {"steps": None, "trainable": ["g_a"]}])
    data = lambda: DataLoader(list(_batch(8)), batch_size=2)  # noqa: E731
    module = LitCodec(tiny_codec(), None, lmbda=0.01, schedule=sched())
    t = _trainer(2)
    t.fit(module, data())
    ckpt = tmp_path / "stage0.ckpt"
    t.save_checkpoint(ckpt)
    torch.manual_seed(1)
    resumed = LitCodec(tiny_codec(), None, lmbda=0.01, schedule=sched())
    groups = resumed.codec.parameter_groups()
    t2 = _trainer(4)
    t2.fit(resumed, data(), ckpt_path=str(ckpt))
    assert t2.global_step == 4 and resumed._stage == "stage1"
    trained = module.codec.parameter_groups()
    same = lambda a, b: all(torch.equal(p, q) for p, q in zip(a, b))  # noqa: E731
    assert not same(groups["g_a"], trained["g_a"])  # stage 1 trained g_a after the resume
    assert same(groups["g_s"], trained["g_s"]) and same(groups["h_a"], trained["h_a"])
