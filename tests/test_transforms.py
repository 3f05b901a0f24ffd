"""Latent compensation transforms (Rethinking Latent Variable, WACV 2026): LRP, LPC (learned / predicted), FPC,
latent-MSE."""
from __future__ import annotations

import math

import pytest
import torch

from codecx.quantizers.scalar import ste_round
from codecx.transforms import FPC, LPC, LRP, LatentMSE, WalkState
from codecx.types import EntropyParams
from conftest import tiny_codec

M = 12


def _walk(codec, mode="train", shape=(2, M, 4, 4), seed=0):
    """(y, y_hat, state): a mean-scale prior and the STE-rounded y_hat of quantizer=mixed."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=g) * 3).requires_grad_(True)
    means = torch.randn(shape, generator=g)
    scales = torch.rand(shape, generator=g) + 0.2
    params = EntropyParams(means, scales, codec.backbone.gaussian_conditional)
    y_hat = ste_round(y - means) + means
    return y, y_hat, WalkState(codec=codec.view, mode=mode, y=y, params=params)


def _attached(t, name="mbt_mean"):
    codec = tiny_codec(name, "mixed", M=M)
    t.attach(codec.view)
    return t, codec


ALL = [lambda: LRP(hidden=16, hidden2=8), lambda: LPC("learned"), lambda: LPC("predicted", hidden=8),
       lambda: FPC(), lambda: LatentMSE(0.5)]
IDS = ["lrp", "lpc_learned", "lpc_predicted", "fpc", "latent_mse"]


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "eval", "decode"])
def test_shape_and_zero_init_identity_at_decode(make, mode):
    t, codec = _attached(make())
    y, y_hat, state = _walk(codec, mode)
    if mode == "decode":
        state.y = None
    out = t(y_hat, state)
    assert out.shape == y_hat.shape and torch.isfinite(out).all()
    if mode != "train" or isinstance(t, (LRP, LatentMSE)):
        # zero-initialised: a checkpoint's decoded output is unchanged
        assert torch.equal(out, y_hat)
    if mode == "decode":
        assert not state.losses and not state.metrics


def test_lrp_layers_follow_minnen_singh():
    t, _ = _attached(LRP())
    convs = [m for m in t.f if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (2 * M, 224, (5, 5), (1, 1)), (224, 128, (5, 5), (1, 1)), (128, M, (3, 3), (1, 1))]
    # the residual is bounded by 0.5 (the tanh), and the means enter f
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.05)
    _, y_hat, state = _walk(_attached(LRP())[1], "eval")
    out = t(y_hat, state)
    assert (out - y_hat).abs().max() <= 0.5 + 1e-6 and not torch.equal(out, y_hat)
    state.params.means = state.params.means + 1
    assert not torch.equal(t(y_hat, state), out)


def test_lpc_learned_parameters_and_sampling():
    t, _ = _attached(LPC("learned"))
    names = dict(t.named_parameters())
    assert set(names) == {"mu_r", "log_sigma_r"} and names["mu_r"].shape == (1, M, 1, 1)
    assert torch.allclose(names["log_sigma_r"].exp(), torch.full((1, M, 1, 1), 1 / 6))
    with torch.no_grad():
        t.mu_r.fill_(0.1)
        t.log_sigma_r.fill_(math.log(0.05))
    codec = _attached(LPC())[1]
    _, y_hat, state = _walk(codec, "train", shape=(4, M, 32, 32))
    r = t(y_hat, state) - y_hat
    assert abs(r.mean().item() - 0.1) < 0.005 and abs(r.std().item() - 0.05) < 0.005
    # at decode the mean: deterministic and exactly y_hat + mu_r
    state.mode = "decode"
    a, b = t(y_hat, state), t(y_hat, state)
    assert torch.equal(a, b) and torch.equal(a, y_hat + t.mu_r)


def test_lpc_predicted_reads_the_prior():
    t, codec = _attached(LPC("predicted", hidden=8))
    with torch.no_grad():
        t.predictor[-1].weight.normal_(0, 0.1)
    _, y_hat, state = _walk(codec, "eval")
    a = t(y_hat, state)
    assert not torch.equal(a, y_hat)  # per-element mu_r
    state.params.scales = state.params.scales * 2
    assert not torch.equal(t(y_hat, state), a)


def test_fpc_fixed_clamped_training_noise():
    t, codec = _attached(FPC())
    assert not list(t.parameters())
    _, y_hat, state = _walk(codec, "train", shape=(4, M, 32, 32))
    r = (t(y_hat, state) - y_hat).detach()
    assert r.abs().max() <= 0.5 + 1e-6
    assert abs(r.mean().item()) < 0.01 and abs(r.std().item() - 1 / 6) < 0.01


def test_latent_mse_term_by_hand():
    t, codec = _attached(LPC("learned", latent_mse=0.3))
    with torch.no_grad():
        t.mu_r.fill_(0.2)
    y, y_hat, state = _walk(codec, "eval")
    out = t(y_hat, state)
    expected = ((y.detach() - y_hat.detach() - 0.2) ** 2).sum().item() / y.numel()
    assert state.metrics["latent_mse_raw"].item() == pytest.approx(expected, rel=1e-6)
    assert state.losses["latent_mse"].item() == pytest.approx(0.3 * expected, rel=1e-6)
    # a second term (transform=[lpc,latent_mse]) adds to the first, measured on y_hat'
    LatentMSE(2.0)(out, state)
    assert state.losses["latent_mse"].item() == pytest.approx(2.3 * expected, rel=1e-6)
    # weight 0: logged, not in the loss
    state = _walk(codec, "train")[2]
    LatentMSE(0.0)(state.y.detach(), state)
    assert "latent_mse" not in state.losses and state.metrics["latent_mse_raw"].item() == 0


@pytest.mark.parametrize("make", ALL[:3], ids=IDS[:3])
def test_gradient_reaches_transform_and_encoder(make):
    t, codec = _attached(make())
    last = t.f[-1] if isinstance(t, LRP) else getattr(t, "predictor", [None])[-1]
    if last is not None:  # a zero last layer blocks the gradient to the earlier ones at step 0
        torch.nn.init.normal_(last.weight, 0, 0.01)
    t.latent_mse = 1.0
    y, y_hat, state = _walk(codec, "train")
    out = t(y_hat, state)
    (out.square().mean() + state.losses["latent_mse"]).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _codec_grads(transforms, seed=0):
    """{parameter name: gradient} of the codec loss (rate + lmbda D + the transforms' terms) of
    one training step of a tiny mbt_mean with quantizer=mixed, and the latent-MSE term's own
    gradients (None without one); the same noise for every call with the same seed."""
    from codecx.lit import LitCodec
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import MixedQuantizer

    torch.manual_seed(0)
    codec = Codec(build_backbone("mbt_mean", N=8, M=M), MixedQuantizer(), transforms=transforms)
    module = LitCodec(codec, lmbda=0.01).train()
    x = torch.cat([_image(1), _image(2)])
    torch.manual_seed(seed)
    out = codec(x)
    names, params = zip(*[(n, p) for n, p in codec.named_parameters() if p.requires_grad])
    term = out.losses.get("latent_mse")
    own = None if term is None else dict(zip(names, torch.autograd.grad(term, params, retain_graph=True,
                                                                        allow_unused=True)))
    loss = module.codec_loss(x, out, 0)[0]
    return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True))), own


@pytest.mark.parametrize("make, trained", [
    (lambda w: LRP(hidden=8, hidden2=8, latent_mse=w), "transforms.0.f.4."),
    (lambda w: LPC("learned", latent_mse=w), "transforms.0."),
    (lambda w: LPC("predicted", hidden=8, latent_mse=w), "transforms.0.predictor.2."),
], ids=["lrp", "lpc_learned", "lpc_predicted"])
def test_latent_mse_trains_the_compensation(make, trained):
    """The latent-MSE term (Rethinking Latent Variable, WACV 2026) trains the compensation: its own
    gradient on the compensation's
    parameters is nonzero, and the codec loss's gradient there differs from the control's (the
    same transform without the term, same noise); elsewhere it is the control's up to what the
    compensation's inputs carry back."""
    with_term, own = _codec_grads([make(1.0)])
    control, _ = _codec_grads([make(0.0)])
    comp = [n for n in with_term if n.startswith(trained)]
    assert comp
    for n in comp:
        assert own[n] is not None and own[n].abs().sum() > 0, n
        assert not torch.allclose(with_term[n], control[n]), n
    # zero-initialised last layers: nothing reaches the encoder yet, so g_a's gradient is the control's
    for n in (n for n in with_term if n.startswith("backbone.g_a")):
        assert torch.allclose(with_term[n], control[n], rtol=1e-5, atol=1e-8), n


@pytest.mark.parametrize("transforms", [lambda: [LatentMSE(1.0)], lambda: [FPC(latent_mse=1.0)],
                                        lambda: [FPC(), LatentMSE(1.0)]],
                         ids=["latent_mse_alone", "fpc_latent_mse", "fpc_then_latent_mse"])
def test_latent_mse_without_compensation_trains_nothing(transforms):
    """Without a learned compensation the term is a constant of every parameter (y - y_hat is
    detached under STE / mixed rounding; FPC's noise is fixed): the null arm of issue 29,
    refused by the pre-flight check (test below)."""
    _, own = _codec_grads(transforms())
    assert all(g is None or not g.any() for g in own.values())
    assert not any(t.learned for t in transforms())


@pytest.mark.parametrize("overrides, refused", [
    (["transform=latent_mse"], "transform.latent_mse"),
    (["transform=fpc", "transform.fpc.latent_mse=1"], "transform.fpc"),
    (["transform=[latent_mse,lrp]"], "transform.latent_mse"),  # measured before the compensation
    (["transform=[fpc,latent_mse]"], "transform.latent_mse"),
    (["transform=[lrp,latent_mse]"], None),
    (["transform=lpc", "transform.lpc.latent_mse=1"], None),
    (["transform=latent_mse", "transform.latent_mse.weight=0"], None),  # logged only, no term
])
def test_precheck_refuses_a_latent_mse_that_trains_nothing(overrides, refused):
    from codecx.config import ConfigError, precheck
    from codecx.train import CONF_DIR

    if refused is None:
        precheck(overrides, CONF_DIR)
        return
    with pytest.raises(ConfigError, match=f"^{refused}: its latent-MSE term trains nothing") as e:
        precheck(overrides, CONF_DIR)
    assert "\n" not in str(e.value)


def test_bad_options_and_backbones():
    with pytest.raises(ValueError, match="learned, predicted"):
        LPC("per_channel")
    with pytest.raises(ValueError, match="latent_mse"):
        LRP(latent_mse=-1)
    with pytest.raises(ValueError, match="factorized prior has none"):
        _attached(LPC("predicted"), "bmshj_factorized")
    with pytest.raises(RuntimeError, match="attach"):
        LRP()(torch.zeros(1, M, 2, 2), WalkState(codec=None, mode="eval"))
    with pytest.warns(UserWarning, match="quantizer=mixed"):
        LRP(hidden=4, hidden2=4).attach(tiny_codec("mbt_mean", "noise", M=M).view)


def test_factorized_prior_uses_channel_medians():
    """bmshj_factorized: LRP / LPC(learned) work, the 'means' being the bottleneck's medians."""
    codec = tiny_codec("bmshj_factorized", "mixed", M=M)
    x = torch.rand(1, 3, 64, 64)
    y = codec.backbone.g_a(x)
    params = codec.backbone.params(None, like=y)
    for t in (LRP(hidden=8, hidden2=8), LPC("learned")):
        t.attach(codec.view)
        out = t(y, WalkState(codec=codec.view, mode="eval", y=y, params=params))
        assert out.shape == y.shape


# ---------------------------------------------------------------- in the codec pipeline
def _codec_with(t, name="mbt_mean"):
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import MixedQuantizer

    return Codec(build_backbone(name, N=8, M=None if name.startswith("cheng") else M),
                 MixedQuantizer(), transforms=[t])


def _perturb(t):
    """Non-trivial transform weights (zero-initialised ones would leave y_hat unchanged)."""
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def _image(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


CODEC_CASES = [("mbt_mean", 0), ("mbt_mean", 1), ("mbt_mean", 2), ("mbt_mean", 3), ("mbt_mean", 4),
               ("mbt", 2), ("bmshj_hyperprior", 0)]


@pytest.mark.parametrize("name,which", CODEC_CASES,
                         ids=[f"{n}-{IDS[w]}" for n, w in CODEC_CASES])
def test_real_bitstream_round_trip_reproduces_y_hat_prime(name, which):
    """The decoder of a real codecx file sees exactly the encoder side's y_hat' (g_s input) and
    decodes exactly the eval forward's image; the transform's weights are in the state dict."""
    from codecx.eval.load import prepare
    from codecx.eval.code import code_image

    torch.manual_seed(0)
    t = ALL[which]()
    codec = _codec_with(t, name)
    _perturb(t)
    own = {f"transforms.0.{k}" for k, _ in t.named_parameters()}
    assert own <= set(codec.state_dict())
    codec = prepare(codec)
    seen = []
    hook = codec.backbone.g_s.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    x = _image(which)
    out = codec(x)
    row, x_dec = code_image(codec, x)
    hook.remove()
    assert torch.equal(x_dec, out.x_hat.clamp(0, 1))
    assert any(torch.equal(s, seen[0]) for s in seen[1:])  # the decoder's g_s input: y_hat'
    y_q = codec.quantizer.hard(out.y, out.params)  # the coded y_hat, before the transform
    assert torch.equal(seen[0], out.y_hat)
    assert torch.equal(seen[0], y_q) != bool(own)  # trained weights change what g_s sees


def test_compose_train_checkpoint_and_eval(tmp_path):
    """transform=[lpc,latent_mse] from Hydra; a Lightning step trains the transform (latent-MSE
    logged and in the loss); the checkpoint rebuilds the codec with it and no extra flag."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from torch.utils.data import DataLoader

    from codecx.eval.load import load_codec
    from codecx.train import CONF_DIR, build_module

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["model.N=8", f"model.M={M}", "quantizer=mixed",
                                              "transform=[lpc,latent_mse]", "transform.lpc.latent_mse=0.5",
                                              "transform.latent_mse.weight=0.25", "lmbda=0.01"])
    finally:
        GlobalHydra.instance().clear()
    pl.seed_everything(0)
    module = build_module(cfg)
    ts = list(module.codec.transforms)
    assert [type(t) for t in ts] == [LPC, LatentMSE] and ts[0].latent_mse == 0.5
    before = {k: v.clone() for k, v in ts[0].state_dict().items()}
    x = torch.stack([_image(i)[0] for i in range(2)])
    module.train()
    out = module.codec(x)
    assert set(out.losses) == {"latent_mse"} and "latent_mse_raw" in out.metrics
    # both terms: 0.5 * lpc's y_hat' error + 0.25 * the same y_hat' error (latent_mse runs after lpc)
    assert out.losses["latent_mse"].item() == pytest.approx(0.75 * out.metrics["latent_mse_raw"].item(), rel=1e-5)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader([x[0], x[1]], batch_size=2))
    assert trainer.global_step == 2
    logged = trainer.callback_metrics
    assert {"train/latent_mse", "train/latent_mse_raw"} <= set(logged)
    assert float(logged["train/latent_mse"]) > 0
    assert any(not torch.equal(before[k], v) for k, v in ts[0].state_dict().items())
    assert all(torch.isfinite(v).all() for v in ts[0].state_dict().values())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    codec, config = load_codec(path)
    assert [type(t) for t in codec.transforms] == [LPC, LatentMSE]
    assert torch.equal(codec.transforms[0].mu_r, ts[0].mu_r.detach())
    module.codec.eval()
    with torch.no_grad():
        assert torch.equal(codec(x[:1]).x_hat, module.codec(x[:1]).x_hat)


@pytest.mark.parametrize("which", [0, 2], ids=[IDS[0], IDS[2]])
def test_training_lowers_the_loss(which):
    """A few real Lightning steps on one batch with only the transform trainable lower the loss."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from codecx.lit import LitCodec, Schedule

    pl.seed_everything(0)
    t = ALL[which]()
    codec = _codec_with(t)
    stages = [{"steps": None, "trainable": ["transforms"]}]  # the codec frozen: only the transform learns
    module = LitCodec(codec, lmbda=0.05, schedule=Schedule(lr=1e-2, scheduler="constant", stages=stages))
    frozen = [p.detach().clone() for p in codec.backbone.parameters()]
    x = _image(5)

    def loss():
        module.eval()
        with torch.no_grad():
            out = codec(x)
            return module.codec_loss(x, out, 0)[0].item()

    first = loss()
    module.train()
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader([x[0]], batch_size=1))
    last = loss()
    assert math.isfinite(last) and last < first
    assert all(torch.equal(a, b) for a, b in zip(frozen, codec.backbone.parameters()))


def test_lattice_quantizer_round_trip():
    """quantizer=hex (codecx.quantizers.LatticeQuantizer): the transforms act on the lattice
    y_hat like on the scalar one; decode is exact."""
    from codecx.eval.load import prepare
    from codecx.eval.code import code_image
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import LatticeQuantizer

    torch.manual_seed(0)
    t = LRP(hidden=8, hidden2=8)
    codec = Codec(build_backbone("mbt_mean", N=8, M=M), LatticeQuantizer("hex"), transforms=[t])
    _perturb(t)
    codec.train()
    assert codec(torch.rand(2, 3, 64, 64)).x_hat.shape == (2, 3, 64, 64)
    codec = prepare(codec)
    x = _image(3)
    _, x_dec = code_image(codec, x)
    assert torch.equal(x_dec, codec(x).x_hat.clamp(0, 1))


def test_zero_initialised_transforms_keep_a_checkpoints_output():
    """Adding a fresh LRP / LPC (learned, predicted) / FPC to trained weights changes neither the
    file nor the decoded image (fine-tunes start from the checkpoint's exact output)."""
    from codecx.eval.load import prepare
    from codecx.eval.code import code_image
    from codecx.models import Codec, build_backbone
    from codecx.quantizers import MixedQuantizer

    torch.manual_seed(0)
    plain = prepare(Codec(build_backbone("mbt_mean", N=8, M=M), MixedQuantizer()))
    x = _image(4)
    ref_row, ref = code_image(plain, x)
    ts = [LRP(hidden=8, hidden2=8), LPC("learned"), LPC("predicted", hidden=8), FPC()]
    codec = Codec(build_backbone("mbt_mean", N=8, M=M), MixedQuantizer(), transforms=ts)
    codec.backbone.load_state_dict(plain.backbone.state_dict())
    codec = prepare(codec)
    row, x_dec = code_image(codec, x)
    assert torch.equal(x_dec, ref) and row["bytes"] == ref_row["bytes"]
