"""trainer.channels_last / trainer.compile (codecx.lit.speed, issue 33 item 3): the same losses
as the eager step, state dicts and checkpoints unchanged, eval and copies eager."""
from __future__ import annotations

import copy
import logging

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from codecx.lit import LitCodec
from codecx.lit.speed import (AUTO_COMPILE_STEPS, TRANSFORMS, channels_last, compile_setting, speed_up_transforms,
                              strided_pointwise, wants_compile)
from codecx.regularizers import NoRegularizer
from conftest import TINY, run_train, tiny_codec

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=0, n=2, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)


def _loss_and_grads(codec, module, x, seed=3):
    """The codec loss of one training forward (noise seeded) and the gradients of every parameter."""
    codec.train().zero_grad()
    torch.manual_seed(seed)
    loss = module.codec_loss(x, codec(x))[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in codec.named_parameters() if p.grad is not None}


def test_compile_setting_and_auto():
    assert compile_setting("auto") == "auto" and compile_setting("true") is True
    assert compile_setting(False) is False
    for bad in ("maybe", 1, None):
        with pytest.raises(ValueError, match="trainer.compile=.*true, false or auto"):
            compile_setting(bad)
    assert not wants_compile("auto", AUTO_COMPILE_STEPS - 1) and wants_compile("auto", AUTO_COMPILE_STEPS)
    assert wants_compile("auto", -1) and wants_compile(True, 2) and not wants_compile(False, 10**6)


@pytest.mark.medium  # runs train.py (a subprocess)
def test_bad_compile_setting_is_a_config_error():
    r = run_train([*TINY, "trainer.max_steps=1", "trainer.compile=sometimes"])
    assert r.returncode == 2 and "trainer.compile='sometimes': must be true, false or auto" in r.stderr


def test_channels_last_same_loss_and_gradients():
    """Same seed, same batch: with the transforms channels-last, the loss and gradients equal the
    eager ones up to the convolution kernels' rounding (the noise is drawn the same)."""
    codec = tiny_codec("mbt_mean", "noise")
    module = LitCodec(codec, NoRegularizer(), lmbda=0.01)
    x = _batch()
    loss, grads = _loss_and_grads(codec, module, x)
    seen = []
    codec.backbone.g_s.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    assert speed_up_transforms(codec.backbone, channels_last_on=True) == list(TRANSFORMS)
    loss_cl, grads_cl = _loss_and_grads(codec, module, x)
    assert seen == [True]
    assert loss_cl.item() == pytest.approx(loss.item(), rel=1e-5)
    assert grads.keys() == grads_cl.keys()
    for n in grads:
        torch.testing.assert_close(grads_cl[n], grads[n], rtol=1e-3, atol=1e-5, msg=n)
    codec.eval()  # eval mode (validation, coding): the transforms as before
    with torch.no_grad():
        codec(x[:1])
    assert seen == [True, False]
    xc = channels_last(x)
    assert xc.is_contiguous(memory_format=torch.channels_last) and torch.equal(xc, x)


def test_channels_last_skips_strided_pointwise_convolutions():
    """cheng2020's g_a (residual blocks with a 1x1 stride-2 skip) stays NCHW: oneDNN's channels-last
    weight gradient of that convolution corrupts the heap on CPU (torch 2.14; the method matrix's
    cheng_anchor combination aborted with 'corrupted double-linked list'); its other transforms switch."""
    codec = tiny_codec("cheng_anchor", "noise")
    assert strided_pointwise(codec.backbone.g_a) and not strided_pointwise(codec.backbone.g_s)
    assert speed_up_transforms(codec.backbone, channels_last_on=True) == ["h_a", "h_s", "g_s"]
    assert codec.backbone.g_a._compiled_call_impl is None


def test_fit_applies_the_switches_once():
    """LitCodec(channels_last=True) under the real Trainer: g_a sees NHWC batches in training;
    the weights keep their memory format; compile=False compiles nothing (no warm-up line)."""
    seen = []
    pl.seed_everything(0)
    module = LitCodec(tiny_codec("mbt_mean", "noise"), NoRegularizer(), lmbda=0.01, channels_last=True)
    module.codec.backbone.g_a.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(list(_batch(n=4)), batch_size=2))
    assert seen == [True, True] and module.sped_up == list(TRANSFORMS)
    assert all(p.is_contiguous() for p in module.parameters())
    assert module._warmup_start is None  # not compiled
    eager = LitCodec(tiny_codec("mbt_mean", "noise"), NoRegularizer(), lmbda=0.01)  # the defaults: off
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(eager, DataLoader(list(_batch(n=2)), batch_size=2))
    assert eager.sped_up == [] and eager.codec.backbone.g_a._compiled_call_impl is None


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler (simulated)")


@pytest.mark.medium  # a torch.compile build (~5 s): make test runs it, test-quick does not
def test_compile_same_loss_state_dict_and_eager_copies():
    """channels-last + torch.compile (aot_eager here: dynamo's graph capture and AOT autograd
    without inductor's C++ build, which test_train_py_compiled_* runs): same loss and gradients
    as eager, the state dict keeps its keys, eval mode and deep copies run as before."""
    codec = tiny_codec("mbt_mean", "noise")
    module = LitCodec(codec, NoRegularizer(), lmbda=0.01)
    x = _batch()
    keys = list(codec.state_dict())
    loss, grads = _loss_and_grads(codec, module, x)
    assert speed_up_transforms(codec.backbone, True, True, backend="aot_eager") == list(TRANSFORMS)
    assert speed_up_transforms(codec.backbone, True, True, backend="aot_eager") == []  # already applied
    assert list(codec.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    loss_c, grads_c = _loss_and_grads(codec, module, x)
    assert loss_c.item() == pytest.approx(loss.item(), rel=1e-5)
    for n in grads:
        torch.testing.assert_close(grads_c[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # a deep copy (the evaluation's CPU copy) has no compiled call; eval mode bypasses it
    twin = copy.deepcopy(codec)
    assert all(getattr(twin.backbone, p)._compiled_call_impl is None for p in TRANSFORMS)
    from torch._dynamo.utils import counters

    counters.clear()
    torch._dynamo.reset()  # a call through torch.compile compiles again: unique_graphs counts it
    codec.eval()
    with torch.no_grad():
        out = codec(x[:1])
    assert out.x_hat.shape == x[:1].shape
    assert not counters["stats"].get("unique_graphs"), "eval mode went through torch.compile"
    codec.train()(x)
    assert counters["stats"].get("unique_graphs"), "the test does not see compiled calls"


def test_compile_failure_auto_runs_eagerly_true_raises(caplog):
    codec = tiny_codec("mbt_mean", "noise")
    x = _batch()
    torch._dynamo.reset()
    speed_up_transforms(codec.backbone, False, True, strict=False, backend=_failing_backend)
    with caplog.at_level(logging.WARNING, logger="codecx"):
        out = codec.train()(x)
    assert out.x_hat.shape == x.shape
    assert "trainer.compile=auto: torch.compile cannot compile g_a" in caplog.text
    codec = tiny_codec("mbt_mean", "noise")
    torch._dynamo.reset()
    speed_up_transforms(codec.backbone, False, True, strict=True, backend=_failing_backend)
    with pytest.raises(RuntimeError, match="trainer.compile=true: torch.compile cannot compile g_a"):
        codec.train()(x)


@pytest.mark.slow  # inductor's C++ build: ~1 min per run on 2 shared cores
def test_train_py_compiled_resumes_eager_and_back(tmp_path):
    """A checkpoint written with trainer.compile=true loads with it off and vice versa (no
    `_orig_mod.` keys); the compile warm-up is printed."""
    for first, second, name in (("true", "false", "a"), ("false", "true", "b")):
        run_dir = tmp_path / name
        args = [*TINY, f"hydra.run.dir={run_dir}", "checkpoint.every_n_steps=1", "trainer.channels_last=true"]
        r = run_train([*args, "trainer.max_steps=2", f"trainer.compile={first}"], timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("torch.compile warm-up: first step" in r.stdout) == (first == "true")
        last = run_dir / "checkpoints" / "last.ckpt"
        keys = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        assert not any("_orig_mod" in k for k in keys)
        r = run_train([*args, "trainer.max_steps=4", f"trainer.compile={second}"], timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resuming from" in r.stderr + r.stdout
        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4


def test_channels_last_is_off_on_cpu_and_on_with_trainer_gpu():
    """trainer.channels_last: false by default (no gain on CPU: train_fast 0.99, and the path of
    the oneDNN heap bug), true in the one-GPU preset; trainer.compile stays auto in both."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from codecx.train import CONF_DIR

    for overrides, want in (([], False), (["trainer=gpu"], True)):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        assert cfg.trainer.channels_last is want and cfg.trainer.compile == "auto"
