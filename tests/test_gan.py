"""reg=illm (MS-ILLM) and reg=patchgan (HiFiC): labeler, discriminators, losses, training.
Tiny widths, 64-px images; the released sizes only in parameter counts on the meta device."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from codecx.regularizers.gan import (ILLMRegularizer, PatchGANDiscriminator, PatchGANRegularizer,
                                     UNetDiscriminator, oasis_d_loss, oasis_g_loss)
from codecx.regularizers.labeler import VQLabeler, load_labeler
from conftest import tiny_codec

TINY_LABELER = dict(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, embed_dim=16, code_dim=4, codebook_size=32)
TINY_D = dict(channels=[8, 8, 16, 16, 16, 16], context_channels=4, head_channels=8)


@pytest.fixture(scope="module")
def labeler_file(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("lab") / "labeler.pt"
    VQLabeler(**TINY_LABELER).save(p)
    return p


def _images(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)


# ---------------------------------------------------------------- labeler
def test_labeler_shapes_labels_and_frozen(labeler_file):
    full = sum(p.numel() for p in _meta(VQLabeler).parameters())
    assert 17e6 < full < 19e6  # VQGAN ch 64, mult 1,2,2,4 with XCiT attention
    lab = load_labeler(labeler_file)
    assert not lab.training and not any(p.requires_grad for p in lab.parameters())
    lab.train()  # labels() runs in eval mode whatever the module's mode, and restores it
    x = _images(2)
    u = lab.labels(x)
    assert u.shape == (2, 8, 8) and u.dtype == torch.long and lab.training
    assert int(u.min()) >= 0 and int(u.max()) < 32
    # argmin of the distance to the L2-normalised codebook, by brute force
    lab.eval()
    with torch.no_grad():
        z = lab.encode(x).permute(0, 2, 3, 1).reshape(-1, 4)
        dist = torch.cdist(z, F.normalize(lab.codebook, dim=1))
    assert torch.equal(u.flatten(), dist.argmin(1))
    with pytest.raises(ValueError, match="multiples of 8"):
        lab.labels(torch.rand(1, 3, 60, 64))


def test_labeler_loss_terms_and_training_entry(tmp_path, tiny_images, capsys):
    torch.manual_seed(0)
    lab = VQLabeler(**TINY_LABELER)
    x = _images(2)
    loss, m = lab.loss(x)
    expected = m["mse"] + m["codebook"] + 0.25 * m["commitment"]  # LPIPS off here
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert lab.codebook.grad is not None and lab.encoder[0].weight.grad is not None
    out = tmp_path / "lab.pt"
    from codecx.cli import main as codecx_main

    rc = codecx_main(["train-labeler", "--data", str(tiny_images), "--out", str(out), "--steps", "2",
                       "--batch-size", "2", "--crop-size", "32", "--no-lpips", "--ch", "8",
                       "--ch-mult", "1", "2", "2", "2",
                       "--num-res-blocks", "1", "--embed-dim", "16", "--code-dim", "4", "--codebook-size", "32"])
    assert rc == 0 and load_labeler(out).codebook_size == 32
    # LPIPS-VGG weights come from a local file: a missing one is one error naming it
    rc = codecx_main(["train-labeler", "--data", str(tiny_images), "--out", str(tmp_path / "x.pt"),
                      "--lpips-weights", str(tmp_path / "nope.pth")])
    assert rc == 1 and not (tmp_path / "x.pt").exists()
    assert "vgg16-397923af.pth" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="reg.labeler=.*no such labeler file.*train-labeler"):
        load_labeler(tmp_path / "missing.pt")


# ---------------------------------------------------------------- discriminators and losses
def _meta(cls, *args, **kw):
    with torch.device("meta"):
        return cls(*args, **kw)


def test_discriminator_shapes_and_sizes():
    n_unet = sum(p.numel() for p in _meta(UNetDiscriminator, 220).parameters())
    assert 17.5e6 < n_unet < 18.5e6  # the released ~18M-parameter D
    d = UNetDiscriminator(12, 33, **TINY_D)
    assert d(torch.rand(2, 3, 64, 64), torch.rand(2, 12, 4, 4)).shape == (2, 33, 8, 8)
    assert d(torch.rand(1, 3, 128, 64), torch.rand(1, 12, 8, 4)).shape == (1, 33, 16, 8)
    with pytest.raises(ValueError, match="not a multiple of 64"):
        d(torch.rand(1, 3, 96, 64), torch.rand(1, 12, 6, 4))
    p = PatchGANDiscriminator(12, channels=(8, 8, 8, 8), context_channels=4)
    assert p(torch.rand(2, 3, 64, 64), torch.rand(2, 12, 4, 4)).shape == (2, 1, 8, 8)
    full = PatchGANDiscriminator(220)
    assert full(torch.rand(1, 3, 256, 256), torch.rand(1, 220, 16, 16)).shape == (1, 1, 32, 32)
    assert all(hasattr(m, "parametrizations") for m in full.modules() if isinstance(m, torch.nn.Conv2d))


def test_oasis_losses_on_hand_made_logits():
    labels = torch.tensor([[[0, 2], [1, 0]]])  # u(x) in 0..2, classes 0..3 (0 = fake)
    sure = torch.full((1, 4, 2, 2), -20.0)
    sure.scatter_(1, (labels + 1).unsqueeze(1), 20.0)  # D puts everything on u(x)+1
    fake_sure = torch.full((1, 4, 2, 2), -20.0)
    fake_sure[:, 0] = 20.0
    assert oasis_d_loss(sure, fake_sure, labels).item() == pytest.approx(0, abs=1e-6)
    assert oasis_g_loss(fake_sure, labels).item() == pytest.approx(40, rel=1e-3)
    uniform = torch.zeros(1, 4, 2, 2)
    assert oasis_d_loss(uniform, uniform, labels).item() == pytest.approx(math.log(4))
    assert oasis_g_loss(uniform, labels).item() == pytest.approx(math.log(4))
    # the real term counts u(x)+1, not u(x)
    shifted = torch.full((1, 4, 2, 2), -20.0)
    shifted.scatter_(1, labels.unsqueeze(1), 20.0)
    assert oasis_d_loss(shifted, fake_sure, labels).item() > 10


def _out(codec, x):
    from codecx.lit.module import detach_output

    return detach_output(codec.train()(x))


@pytest.mark.parametrize("kind", ["illm", "patchgan"])
def test_discriminator_loss_decreases_on_a_fixed_batch(kind, labeler_file):
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean")
    reg = (ILLMRegularizer(str(labeler_file), **TINY_D) if kind == "illm"
           else PatchGANRegularizer(channels=[8, 8, 8, 8], context_channels=4))
    reg.attach(codec)
    (phase,) = reg.aux_phases()
    assert phase.name == "discriminator" and phase.optimizer == "adamw" and phase.betas == (0.5, 0.9)
    assert phase.lr == (4e-4 if kind == "illm" else 1e-4)
    x = _images(2)
    with torch.no_grad():
        out = _out(codec, x)
    opt = torch.optim.AdamW(phase.params, lr=3e-3, betas=phase.betas)
    losses = []
    for _ in range(6):
        loss, metrics = phase.loss(x, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    # the generator term: gradients reach x_hat, never the discriminator (frozen in that phase)
    opt.zero_grad(set_to_none=True)
    reg.requires_grad_(False)
    out_g = codec(x)
    r = reg(x, out_g)
    r.loss.backward()
    assert r.loss.item() > 0 and set(r.metrics) == {"g_loss", "gan_loss"}
    assert any(p.grad is not None for p in codec.backbone.g_s.parameters())
    assert all(p.grad is None for p in reg.discriminator.parameters())


def test_illm_real_and_fake_come_from_different_images(labeler_file):
    """D's real half and fake half are different images: swapping the fakes of the first half
    changes the loss, swapping the reals' x_hat does not."""
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean")
    reg = ILLMRegularizer(str(labeler_file), **TINY_D)
    reg.attach(codec)
    x = _images(4)
    with torch.no_grad():
        out = _out(codec, x)
        base = reg.d_loss(x, out)[0]
        out.x_hat[2:] = torch.rand_like(out.x_hat[2:])  # x_hat of the real half: unused by D
        assert torch.equal(reg.d_loss(x, out)[0], base)
        out.x_hat[:2] = torch.rand_like(out.x_hat[:2])
        assert not torch.equal(reg.d_loss(x, out)[0], base)
        reg.mc_sampling = False  # HiFiC's pairing: the real half's x_hat is a fake too
        base = reg.d_loss(x, out)[0]
        out.x_hat[2:] = torch.rand_like(out.x_hat[2:])
        assert not torch.equal(reg.d_loss(x, out)[0], base)


@pytest.mark.parametrize("mc_sampling", [True, False])
def test_illm_d_phase_sees_the_real_and_the_fake_images_and_trains_its_image_path(mc_sampling, labeler_file):
    """The D phase LitCodec runs (aux_phases()[0].loss) feeds D the batch as reals and the
    detached x_hat as fakes, unchanged (no in-place edit, no swap), and its loss reaches D's first
    image conv; every D parameter is in the phase (issue 28: the study's blind D was not plumbing)."""
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean")
    reg = ILLMRegularizer(str(labeler_file), mc_sampling=mc_sampling, **TINY_D)
    reg.attach(codec)
    (phase,) = reg.aux_phases()
    d = reg.discriminator
    assert {id(p) for p in phase.params} == {id(p) for p in d.parameters()}
    seen = []
    hook = d.register_forward_pre_hook(lambda m, a: seen.append(tuple(t.detach().clone() for t in a)))
    x = _images(4)
    with torch.no_grad():
        out = _out(codec, x)
    out.x_hat.copy_(F.avg_pool2d(x, 5, 1, 2, count_include_pad=False))  # a known fake: x blurred
    x0, x_hat0 = x.clone(), out.x_hat.clone()
    loss, _ = phase.loss(x, out)
    loss.backward()
    hook.remove()
    (x_real, y_real), (x_fake, y_fake) = seen
    fake, real = (slice(0, 2), slice(2, 4)) if mc_sampling else (slice(None), slice(None))
    assert torch.equal(x_real, x[real]) and torch.equal(x_fake, x_hat0[fake])
    assert torch.equal(y_real, out.y_hat[real]) and torch.equal(y_fake, out.y_hat[fake])
    assert (x_real - x_fake).abs().mean() > 0.01
    assert torch.equal(x, x0) and torch.equal(out.x_hat, x_hat0)  # D edits nothing in place
    first = d.down[0].body[0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_missing_labeler_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="reg.labeler=.*nope.pt"):
        ILLMRegularizer(str(tmp_path / "nope.pt"))


# ---------------------------------------------------------------- training with Lightning
@pytest.mark.parametrize("reg", ["illm", "patchgan"])
def test_one_training_step_through_hydra(reg, labeler_file):
    """train.py's build_module from the composed config: one real Lightning step runs the codec
    phase with the generator term and the discriminator phase, and logs both."""
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    from codecx.train import CONF_DIR, build_module

    over = [f"reg={reg}", "model.N=8", "model.M=12", "reg.context_channels=4"]
    if reg == "illm":
        over += [f"reg.labeler={labeler_file}", "reg.channels=[8,8,16,16,16,16]", "reg.head_channels=8"]
    else:
        over += ["reg.channels=[8,8,8,8]"]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=over)
    pl.seed_everything(0)
    module = build_module(cfg)
    d_before = [p.detach().clone() for p in module.regularizer.discriminator.parameters()]
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(list(_images(2)), batch_size=2))
    logged = trainer.callback_metrics
    assert "train/discriminator_loss" in logged and "train/g_loss" in logged
    assert math.isfinite(float(logged["train/discriminator_loss"]))
    d_after = list(module.regularizer.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d_after))
    if reg == "illm":  # the labeler is not part of the checkpoint
        assert not any("labeler" in k for k in module.state_dict())


# ---------------------------------------------------------------- stage 2
@pytest.fixture(scope="module")
def alex_file(tmp_path_factory):
    from torchvision import models as tvm

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("alex") / "alexnet-owt-7be5be79.pth"
    torch.save(tvm.alexnet(weights=None).state_dict(), p)
    return p


@pytest.mark.parametrize("recipe", ["illm_stage2", "hific_stage2"])
def test_stage2_trains_only_g_s_and_the_discriminator(recipe, labeler_file, alex_file, tmp_path):
    """experiment=illm_stage2 / hific_stage2 (tiny mbt_mean instead of HiFiC): the stage-1
    weights load, and after two steps only g_s and the discriminator have changed; every other
    parameter (g_a, h_a, h_s, entropy models and their quantiles) is bit-identical."""
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    from codecx.models.backbones import MbtMean
    from codecx.train import CONF_DIR, build_module

    torch.manual_seed(3)
    stage1 = tmp_path / "stage1.pth"
    torch.save(MbtMean(N=8, M=12).state_dict(), stage1)
    over = [f"experiment={recipe}", "model=mbt_mean", "model.N=8", "model.M=12", f"model.weights={stage1}",
            "data=sample", f"distortion.lpips_weights={alex_file}", "reg.context_channels=4"]
    if recipe == "illm_stage2":
        over += [f"reg.labeler={labeler_file}", "reg.channels=[8,8,16,16,16,16]", "reg.head_channels=8"]
    else:
        over += ["reg.channels=[8,8,8,8]"]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=over)
    assert cfg.schedule.stages[0].trainable == ["g_s", "discriminator"] and cfg.lmbda == 1
    pl.seed_everything(0)
    module = build_module(cfg)
    loaded = torch.load(stage1, weights_only=True)
    assert all(torch.equal(v, module.codec.backbone.state_dict()[k]) for k, v in loaded.items()
               if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(list(_images(4)), batch_size=2))
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    outside = sorted(n for n in changed if not n.startswith(("codec.backbone.g_s.", "regularizers.0.discriminator.")))
    assert outside == [], outside
    assert any(n.startswith("codec.backbone.g_s.") for n in changed)
    assert any(n.startswith("regularizers.0.discriminator.") for n in changed)
    # the D phase ran with its own settings (schedule.phases.discriminator)
    d_opt = trainer.optimizers[-1]
    assert type(d_opt).__name__ == "AdamW" and d_opt.param_groups[0]["betas"] == (0.5, 0.9)


@pytest.mark.medium
def test_train_py_stage2_resumes_and_codes_exactly(labeler_file, alex_file, tmp_path):
    """The real `python train.py experiment=illm_stage2 ...`: killed after 2 steps (last.ckpt),
    the same command resumes mid stage 2 with the discriminator's optimizer state, and the GAN
    checkpoint codes and decodes bit-exactly."""
    from codecx.eval.load import load_codec
    from codecx.models.backbones import MbtMean
    from conftest import TINY, run_train

    torch.manual_seed(3)
    stage1 = tmp_path / "stage1.pth"
    torch.save(MbtMean(N=8, M=12).state_dict(), stage1)
    run_dir = tmp_path / "run"
    args = ["experiment=illm_stage2", "model=mbt_mean", "data=sample", *TINY, f"model.weights={stage1}",
            f"reg.labeler={labeler_file}", f"distortion.lpips_weights={alex_file}",
            "reg.channels=[8,8,16,16,16,16]", "reg.head_channels=8", "reg.context_channels=4",
            "checkpoint.every_n_steps=1", "eval.every_n_steps=0", f"hydra.run.dir={run_dir}"]
    r = run_train([*args, "trainer.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    r = run_train([*args, "trainer.max_steps=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr + r.stdout
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    d_state = ckpt["optimizer_states"][-1]["state"]  # the discriminator phase's AdamW
    assert d_state and all(int(s["step"]) == 3 for s in d_state.values())
    codec, _ = load_codec(last)
    x = _images(1, 64)
    with torch.no_grad():
        enc = codec.compress(x)
        dec = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
        assert torch.equal(dec, codec(x).x_hat.clamp(0, 1))


@pytest.mark.slow
def test_bench_gan_quick():
    """`python -m benchmarks --only gan --quick` at tiny sizes: the three variants run and the
    summary prints both ratios."""
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "gan", "--quick", "--threads", "1",
                        "--gan-batch-size", "2", "--gan-crop", "64", "--gan-N", "16", "--gan-M", "16",
                        "--gan-d-channels", "8,8,16,16,16,16"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = r.stdout[r.stdout.index("\nSummary"):]
    assert "step time ratio illm/none" in summary and "step time ratio patchgan/none" in summary


@pytest.mark.parametrize("backbone", ["bmshj_factorized", "mbt", "cheng_anchor"])
def test_gan_regularizers_work_with_every_backbone(backbone, labeler_file):
    """D is conditioned on y_hat of whatever width the backbone has (attach reads M)."""
    torch.manual_seed(0)
    codec = tiny_codec(backbone)
    x = _images(2)
    out = codec.train()(x)
    for reg in (ILLMRegularizer(str(labeler_file), **TINY_D),
                PatchGANRegularizer(channels=[8, 8, 8, 8], context_channels=4)):
        reg.attach(codec)
        assert reg.discriminator.context[0].in_channels == out.y_hat.size(1)
        r = reg(x, out)
        d, _ = reg.d_loss(x, _out(codec, x))
        assert math.isfinite(r.loss.item()) and math.isfinite(d.item())


def test_illm_condition_off_and_discriminator_warmup(labeler_file):
    """reg.condition=false: D's logits do not depend on y_hat; reg.warmup_steps=N: the generator
    term is 0 until D has taken N steps, then weight * CE(D(x_hat), u(x)+1)."""
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean")
    x = _images(2)
    with torch.no_grad():
        out = _out(codec, x)
    for condition in (True, False):
        reg = ILLMRegularizer(str(labeler_file), condition=condition, **TINY_D)
        reg.attach(codec)
        with torch.no_grad():
            a = reg.discriminate(out.x_hat, out.y_hat)
            b = reg.discriminate(out.x_hat, out.y_hat + torch.randn_like(out.y_hat))
        assert torch.equal(a, b) is (not condition)
    reg = ILLMRegularizer(str(labeler_file), warmup_steps=2, weight=0.5, **TINY_D)
    reg.attach(codec)
    (phase,) = reg.aux_phases()
    for step in range(3):
        r = reg(x, out)
        assert (r.loss.item() == 0) is (step < 2) and r.metrics["g_loss"].item() > 0
        if step < 2:
            loss, m = phase.loss(x, out)
            assert 0 <= m["d_rf_acc"].item() <= 1
    assert r.loss.item() == pytest.approx(0.5 * r.metrics["g_loss"].item())
    with pytest.raises(ValueError, match="reg.warmup_steps"):
        ILLMRegularizer(str(labeler_file), warmup_steps=-1, **TINY_D)
    pg = PatchGANRegularizer(weight=0.3, channels=[8, 8, 8, 8], context_channels=4, warmup_steps=1)
    pg.attach(codec)
    assert pg(x, out).loss.item() == 0
    pg.aux_phases()[0].loss(x, out)
    r = pg(x, out)
    assert r.loss.item() == pytest.approx(0.3 * r.metrics["g_loss"].item()) and r.loss.item() > 0
