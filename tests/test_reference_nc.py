"""codecx's generative-compression components against NeuralCompression 0.3.1 (the released
MS-ILLM / HiFiC code, installed by `make install` as a test oracle) with the same weights.

Each test builds the reference module at random init, copies its weights into codecx's by a
key mapping, and asserts the same function. Where codecx keeps a deliberate difference, the
test says so. Tiny widths; nothing is downloaded.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # NC's import-time torch.jit.script deprecation notices
    import neuralcompression.models as ncm

from codecx.regularizers.gan import UNetDiscriminator

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand_(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Overwrite every float parameter with N(0, scale^2) noise (zero biases hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


# ---------------------------------------------------------------- conditional U-Net discriminator
def unet_state_from_nc(sd: dict, n_down: int) -> dict:
    """NC `ConditionalUnetDiscriminator` state dict -> codecx `UNetDiscriminator` keys.

    NC nests one `_UnetLevel` per resolution (`model.0.child.child...`); level k's left path is
    codecx's `down.k`, its right (up) path `up.(n_down - 1 - k)`."""
    out = {}
    for k, v in sd.items():
        if k.startswith("input_sequence.0."):
            out["context.0." + k.split(".")[-1]] = v
            continue
        if k.startswith("_unet.model.1."):
            out["head." + k.split(".")[-1]] = v
            continue
        m = re.fullmatch(r"_unet\.model\.0\.((?:child\.)*)(\w+)\.(\d+)\.(weight|bias)", k)
        if m is None:
            raise KeyError(f"unexpected NC discriminator key {k}")
        depth, part, idx, leaf = m.group(1).count("child."), m.group(2), int(m.group(3)), m.group(4)
        name = {("left_block", 2): f"down.{depth}.body.0", ("left_block", 5): f"down.{depth}.body.2",
                ("left_shortcut", 0): f"down.{depth}.skip.0",
                ("right_block", 3): f"up.{n_down - 1 - depth}.body.1",
                ("right_block", 6): f"up.{n_down - 1 - depth}.body.3",
                ("right_shortcut", 0): f"up.{n_down - 1 - depth}.skip.0"}[(part, idx)]
        out[f"{name}.{leaf}"] = v
    return out


@pytest.mark.parametrize("size", ["tiny", "released"])
def test_unet_discriminator_equals_nc(size):
    """Same weights, same logits: the shortcuts see the activated input (NC's in-place LeakyReLU
    after an identity norm), except the top level's, whose input is not activated."""
    torch.manual_seed(0)
    if size == "tiny":
        widths, ctx, classes, m = [8, 8, 16, 16, 16, 16], 4, 33, 12
        nc = ncm.ConditionalUnetDiscriminator(classes, 8, context_in=m, context_out=ctx, chans=[3 + ctx, *widths])
        ours = UNetDiscriminator(m, classes, widths, context_channels=ctx, head_channels=64)
    else:  # the released defaults: widths 128..512, context 16, 1024 + 1 classes
        m, classes = 32, 1025
        nc = ncm.ConditionalUnetDiscriminator(classes, 8, context_in=m)
        ours = UNetDiscriminator(m, classes)
        widths = [128, 128, 256, 256, 512, 512]
    _rand_(nc, scale=0.1 if size == "tiny" else 0.05)
    sd = unet_state_from_nc(nc.state_dict(), len(widths))
    assert set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    y_hat = torch.randn(2, m, 4, 4, generator=g)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, got = nc(xr, y_hat), ours(xo, y_hat)
    assert got.shape == ref.shape == (2, classes, 8, 8)
    assert ref.abs().mean() > 1e-3  # a signal, not a dead net
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.detach().abs().max()))
    if size == "tiny":  # the gradients the codec receives through x_hat agree too
        w = torch.randn(ref.shape, generator=g)
        (ref * w).sum().backward()
        (got * w).sum().backward()
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-5 * float(xr.grad.abs().max()))


# ---------------------------------------------------------------- HiFiC autoencoder (MS-ILLM's released layout)
#: a narrow NC HiFiCAutoencoder (its encoder / generator widths are fixed at the paper's 60..960)
NC_HIFIC = dict(latent_features=16, hyper_features=24, num_residual_blocks=1)
HIFIC_MODEL = {"_target_": "codecx.models.hific.HiFiC", "name": "hific", "N": 24, "M": 16,
               "num_residual_blocks": 1, "scale_levels": 64}  # 64: NC's (CompressAI's) CDF tables


def _smooth_images(n=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 3, h, w, generator=g), 5, 1, 2)


@pytest.fixture(scope="module")
def nc_hific(tmp_path_factory):
    """(random-init NC HiFiCAutoencoder in eval mode, its state dict saved with torch.save).
    Norm gains / offsets and biases are perturbed, so a swapped layer cannot go unnoticed, and
    y and z scaled up to span several quantization bins."""
    torch.manual_seed(0)
    nc = ncm.HiFiCAutoencoder(**NC_HIFIC)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in nc.named_parameters():
            if "bottleneck" not in name and (p.dim() == 1 or name.endswith(("gamma", "beta"))):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        nc.encoder.blocks[-1].weight.mul_(5)
        nc.hyper_analysis[-1].weight.mul_(20)
    path = tmp_path_factory.mktemp("nc") / "msillm_random.ckpt"
    torch.save(nc.state_dict(), path)
    return nc.eval(), path


def _codec(path, **model):
    from codecx.eval.load import codec_from_config, prepare

    return prepare(codec_from_config({**HIFIC_MODEL, "weights": str(path), **model},
                                     {"_target_": "codecx.quantizers.NoiseQuantizer"}))


def _close(got, ref, rel=1e-5):
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=rel * float(ref.abs().max()))


@torch.no_grad()
def test_hific_loads_nc_weights_and_every_stage_agrees(nc_hific):
    """model.weights= a HiFiCAutoencoder state dict: g_a, h_a, h_s (scale, mean), g_s and the
    eval forward (likelihoods of y and z, x_hat) equal NC's within float tolerance."""
    nc, path = nc_hific
    codec = _codec(path)
    bb = codec.backbone
    x = _smooth_images()
    y = nc.encoder(x)
    _close(bb.g_a(x), y)
    z = nc.hyper_analysis(y)
    _close(bb.h_a(y), z)
    assert y.abs().max() > 3 and z.abs().max() > 3  # several bins
    z_hat = torch.round(z)
    _close(bb.h_s(z_hat), torch.cat((nc.hyper_synthesis_scale(z_hat), nc.hyper_synthesis_mean(z_hat)), 1))
    y_hat = torch.round(y)
    _close(bb.g_s(y_hat), nc.decoder(y_hat))
    ref, out = nc(x), codec(x)  # eval: hard quantization of y around the means, z around its medians
    _close(out.y_hat, ref.latent)
    _close(out.x_hat, ref.image)
    _close(out.likelihoods["y"], ref.quantized_latent_likelihoods)
    _close(out.likelihoods["z"], ref.quantized_hyper_latent_likelihoods)


@pytest.mark.medium  # several seconds: the NeuralCompression oracle at test sizes
@torch.no_grad()
def test_hific_codes_the_same_symbols_as_nc(nc_hific):
    """With NC's 64-level tables the two code byte-identical streams and each decodes the other's;
    a codecx file from the loaded model decodes to NC's own reconstruction of its quantized y."""
    from codecx.coding.container import decode_image, encode_image

    nc, path = nc_hific
    nc.update(force=True)
    codec = _codec(path)
    x = _smooth_images(2, 64, 128, seed=3)
    ref = nc.compress(x)
    ours = codec.compress(x)
    for i in range(2):
        assert ours["strings"][i] == [ref.latent_strings[i], ref.hyper_latent_strings[i]]
    ref_x_hat = nc.decompress(ref)  # NC's decoder on its own hard-quantized latents, clamped
    theirs = codec.decompress([[ref.latent_strings[i], ref.hyper_latent_strings[i]] for i in range(2)],
                              ours["shape"], ours["y_shape"], ours["z_shape"])
    _close(theirs, ref_x_hat)
    for i in range(2):
        data = encode_image(codec, x[i : i + 1], b"\0" * 8)
        x_hat, _ = decode_image(codec, data, b"\0" * 8)
        _close(x_hat, ref_x_hat[i : i + 1])
        _close(x_hat, nc(x[i : i + 1]).image.clamp(0, 1))
    # codecx's default 256-level tables code the same symbols in other (shorter) streams
    fine = _codec(path, scale_levels=256)
    _close(fine.decompress(**{k: fine.compress(x)[k] for k in ("strings", "shape", "y_shape", "z_shape")}),
           ref_x_hat)


@pytest.mark.medium  # several seconds: the NeuralCompression oracle at test sizes
def test_hific_export_round_trips_and_errors(nc_hific, tmp_path):
    """state_to_nc gives back the released layout tensor for tensor (CDF tables empty, as in a
    fresh HiFiCAutoencoder), which NC loads strictly; wrong uses are one clear error."""
    from codecx.models.build import load_weights
    from codecx.models.hific import HiFiC, state_to_nc

    nc, path = nc_hific
    original = torch.load(path, weights_only=True)
    exported = state_to_nc(_codec(path).backbone)  # after update(): its tables are dropped
    assert set(exported) == set(original)
    for k, v in original.items():
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    fresh = ncm.HiFiCAutoencoder(**NC_HIFIC)
    fresh.load_state_dict(exported)
    with pytest.raises(ValueError, match="model.channels=.*fixed widths"):
        state_to_nc(HiFiC(N=8, M=4, channels=[4, 4, 4, 4, 4], num_residual_blocks=1))
    from conftest import tiny_codec

    with pytest.raises(ValueError, match="NeuralCompression HiFiCAutoencoder state dict.*use model=hific"):
        load_weights(tiny_codec().backbone, str(path))
    with pytest.raises(ValueError, match="does not fit HiFiC"):
        load_weights(HiFiC(N=24, M=8, num_residual_blocks=1), str(path))


@pytest.mark.medium  # several seconds: the NeuralCompression oracle at test sizes
def test_export_nc_verb(nc_hific, tmp_path, capsys):
    """`codecx export-nc CKPT -o OUT`: a model=hific checkpoint as the released layout (here one
    made from the NC file: it comes back tensor for tensor); another backbone is one error line."""
    from codecx.cli import main as codecx_main

    nc, path = nc_hific
    codec = _codec(path)
    config = {"model": {**HIFIC_MODEL, "weights": str(path)},
              "quantizer": {"_target_": "codecx.quantizers.NoiseQuantizer"}}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"codec.{k}": v for k, v in codec.state_dict().items()},
                "codecx_config": config, "global_step": 0}, ckpt)
    out = tmp_path / "msillm_like.ckpt"
    assert codecx_main(["export-nc", str(ckpt), "-o", str(out)]) == 0
    assert "HiFiCAutoencoder(latent_features=16, hyper_features=24, num_residual_blocks=1)" in capsys.readouterr().out
    original, exported = torch.load(path, weights_only=True), torch.load(out, weights_only=True)
    assert set(exported) == set(original) and all(torch.equal(exported[k], v) for k, v in original.items())
    other = tmp_path / "mbt.ckpt"
    mbt = {"_target_": "codecx.models.backbones.MbtMean", "name": "mbt_mean", "N": 8, "M": 12}
    from codecx.eval.load import codec_from_config

    small = codec_from_config(mbt, config["quantizer"])
    torch.save({"state_dict": {f"codec.{k}": v for k, v in small.state_dict().items()},
                "codecx_config": {"model": mbt, "quantizer": config["quantizer"]}}, other)
    assert codecx_main(["export-nc", str(other), "-o", str(tmp_path / "x.ckpt")]) == 1
    assert "only model=hific has a NeuralCompression layout" in capsys.readouterr().err


@pytest.mark.medium
def test_codecx_eval_on_a_released_layout_file(nc_hific, tmp_path):
    """The docs' command for a released MS-ILLM file (docs/methods/generative.md), `codecx eval model=hific
    model.weights=FILE ...`, on a random-init NC file: with NC's scale table and key rule
    (`scale_levels=64 quantizer=noise quantizer.scale_keys=up`) the streams are NC's own
    (same bytes), per image, and the PSNR is that of NC's own reconstruction."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from codecx.cli import read_image
    from codecx.metrics.rd import psnr_uint8
    from conftest import ROOT

    nc, path = nc_hific
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(64, 128), (128, 64)]):
        x = _smooth_images(1, h, w, seed=10 + i)[0]
        Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(images / f"im{i}.png")
    exe = Path(sys.executable).parent / "codecx"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "codecx.cli"]
    out = tmp_path / "eval"
    r = subprocess.run([*cmd, "eval", "model=hific", "model.N=24", "model.M=16", "model.num_residual_blocks=1",
                        f"model.weights={path}", "scale_levels=64", "quantizer=noise",
                        "quantizer.scale_keys=up", "data=folder", f"data.val_dir={images}",
                        "progress=false", "threads=1", f"hydra.run.dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert sorted(row["image"] for row in rows) == ["im0.png", "im1.png"]
    nc.update(force=True)
    with torch.no_grad():
        for row in rows:
            x = read_image(images / row["image"])
            ref = nc.compress(x)
            n_bytes = len(ref.latent_strings[0]) + len(ref.hyper_latent_strings[0])
            assert float(row["bpp_streams"]) * x.shape[-2] * x.shape[-1] / 8 == n_bytes
            assert float(row["psnr-rgb"]) == pytest.approx(psnr_uint8(x, nc.decompress(ref)), abs=0.01)


# ---------------------------------------------------------------- VQ-VAE labeler and its projector
def _nc_labeler(size: str):
    """A random-init NC VQ-VAE labeler: the released architecture (NC's zoo builder, no
    weights) or a tiny one of the same layout; norm gains, offsets, biases and the XCA
    temperatures perturbed, and the codebook spread over the sphere (NC's init draws every code
    from U(-1/1024, 1/8), one narrow cone, where random latents all pick the same code)."""
    from neuralcompression.layers import NormalizeLatent, ProjectLatent, VQBottleneck
    from neuralcompression.zoo import vqvae_xcit_p8_ch64_cb1024_h8

    torch.manual_seed(0)
    if size == "released":
        nc = vqvae_xcit_p8_ch64_cb1024_h8(pretrained=False)
    else:
        nc = ncm.VqVaeXCiTAutoencoder(
            ch=8, ch_mult=[1, 2, 2, 2], num_res_blocks=1, attn_resolutions=[32], resolution=256,
            embed_dim=16, norm_type="channel",
            bottleneck_op=ProjectLatent(input_dim=16, output_dim=4, child=NormalizeLatent(
                child=VQBottleneck(codebook_size=32, vector_length=4))))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in nc.named_parameters():
            if p.dim() == 1 or name.endswith(("gamma", "beta", "temperature")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        codebook = nc.bottleneck_op.child.child.codebooks[0]
        codebook.copy_(torch.randn(codebook.shape, generator=g))
    return nc.eval()


@pytest.mark.parametrize("size", ["tiny", "released"])
@torch.no_grad()
def test_labeler_loads_nc_vqvae_and_labels_agree(size, tmp_path):
    """load_labeler takes NC's VqVaeXCiTAutoencoder state dict (the released labeler's layout):
    the same widths, latents, labels (VqVaeProjector's indices), VQ losses and reconstruction."""
    from neuralcompression.models import VqVaeProjector

    from codecx.regularizers.labeler import load_labeler

    nc = _nc_labeler(size)
    path = tmp_path / "vqvae.ckpt"
    torch.save(nc.state_dict(), path)
    lab = load_labeler(path)
    if size == "released":
        assert lab.config == dict(ch=64, ch_mult=[1, 2, 2, 4], num_res_blocks=2, embed_dim=256,
                                  code_dim=8, codebook_size=1024, beta=0.25)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    z = torch.nn.functional.normalize(nc.bottleneck_op.input_conv(nc.encoder(x)), dim=1)
    _close(lab.encode(x), z)
    ref = nc(x)  # eval forward: encoder, VQ (argmin distance to the unit codes), decoder
    ours = lab(x)
    _close(ours["x_hat"], ref.image)
    _close(ours["codebook"], ref.embedding_loss)
    _close(ours["commitment"], ref.commitment_loss)
    labels = lab.labels(x)
    assert torch.equal(labels.flatten(), VqVaeProjector(nc)(x))  # NC's projector: flat (B*H*W) indices
    assert torch.equal(labels.flatten(), ref.indices) and labels.unique().numel() > 1


def test_labeler_nc_layout_errors(tmp_path):
    from codecx.regularizers.labeler import load_labeler

    nc = _nc_labeler("tiny")
    state = {k.replace("encoder.down.3.attn", "encoder.down.2.attn"): v for k, v in nc.state_dict().items()}
    torch.save(state, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="attention only at the lowest resolution"):
        load_labeler(tmp_path / "other.ckpt")


# ---------------------------------------------------------------- OASIS losses
def test_oasis_losses_equal_nc():
    """oasis_d_loss / oasis_g_loss equal NC's OASISDiscriminatorLoss / OASISGeneratorLoss on the
    same logits (C + 1 classes, index 0 = fake) and labels, values and gradients."""
    from neuralcompression.loss_fn import OASISDiscriminatorLoss, OASISGeneratorLoss

    from codecx.regularizers.gan import oasis_d_loss, oasis_g_loss

    g = torch.Generator().manual_seed(7)
    real = (3 * torch.randn(2, 33, 4, 6, generator=g)).requires_grad_()
    fake = (3 * torch.randn(2, 33, 4, 6, generator=g)).requires_grad_()
    labels = torch.randint(0, 32, (2, 4, 6), generator=g)
    ref_d = OASISDiscriminatorLoss()(real_logits=real, fake_logits=fake, target=labels)
    ref_g = OASISGeneratorLoss()(fake, labels)
    ref_grads = torch.autograd.grad(ref_d + ref_g, (real, fake))
    d, g_loss = oasis_d_loss(real, fake, labels), oasis_g_loss(fake, labels)
    torch.testing.assert_close(d, ref_d)
    torch.testing.assert_close(g_loss, ref_g)
    for ours, ref in zip(torch.autograd.grad(d + g_loss, (real, fake)), ref_grads):
        torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------- MSE + LPIPS
@pytest.mark.medium  # several seconds: the NeuralCompression oracle at test sizes
def test_mse_lpips_equals_nc(tmp_path):
    """distortion=mse_lpips equals NC's MSELPIPSLoss with MS-ILLM's settings (mse_param 150 on
    [0, 1] images, lpips_param 1, AlexNet, normalize=True) and its eps-inside-the-root
    NormFixLPIPS, both on the same random AlexNet: value and gradient. NC's constructor would
    download ImageNet AlexNet weights, so the reference object is assembled from its own
    classes without that call (its __call__ and NormFixLPIPS.forward are NC's)."""
    from neuralcompression.loss_fn import MSELPIPSLoss
    from neuralcompression.loss_fn._normfix_lpips import NormFixLPIPS
    from torchvision import models as tvm

    from codecx.losses.distortion import MSELPIPS

    from neuralcompression.loss_fn._normfix_lpips import normalize_tensor

    from codecx.losses.distortion import normalize_features

    # the eps fix itself, where it matters: zero and tiny feature vectors (values and gradients)
    v = torch.cat((torch.zeros(1, 8, 2, 2), 1e-5 * torch.randn(1, 8, 2, 2), torch.randn(1, 8, 2, 2)))
    va, vb = v.clone().requires_grad_(), v.clone().requires_grad_()
    torch.testing.assert_close(normalize_features(va), normalize_tensor(vb))
    (normalize_features(va) ** 3).sum().backward()
    (normalize_tensor(vb) ** 3).sum().backward()
    assert torch.isfinite(va.grad).all()
    torch.testing.assert_close(va.grad, vb.grad)
    torch.manual_seed(0)
    alex = tvm.alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alex, path)
    ours = MSELPIPS(lpips_weights=str(path))
    ref = MSELPIPSLoss.__new__(MSELPIPSLoss)
    torch.nn.Module.__init__(ref)
    ref.mse_param, ref.lpips_param, ref.normalize = 150.0, 1.0, True
    # pnet_rand: torchvision's random AlexNet (no download); the linear layers are the lpips
    # package's own file, as codecx's
    ref.lpips_model = NormFixLPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    ref.lpips_model.net.load_state_dict({k: alex["features." + k.split(".", 1)[1]]
                                         for k in ref.lpips_model.net.state_dict()})
    ref.lpips_model.requires_grad_(False)
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 64, 64, generator=g)
    x_hat = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    a, b = x_hat.clone().requires_grad_(), x_hat.clone().requires_grad_()
    value, _ = ours(x, a)
    expected = ref(b, x)
    torch.testing.assert_close(value, expected)
    value.backward()
    expected.backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad)


# ---------------------------------------------------------------- HiFiC PatchGAN
def test_patchgan_is_hific_layout_nc_ships_none():
    """NeuralCompression 0.3.1 has no HiFiC discriminator (its old `HiFiCDiscriminator`, removed
    in the models refactor before MS-ILLM, had no activations between its convs): the reference
    here is the official TensorFlow HiFiC (tensorflow/compression models/hific/archs.py,
    `_PatchDiscriminatorCompareGANImpl`). The forward is recomputed from the layer list written
    out from it with TF's "SAME" padding rule (pad_total = max(k - s, 0) for sides divisible by
    s, the extra pixel after), on the module's own spectral-normalised weights."""
    import torch.nn.functional as F

    from codecx.regularizers.gan import PatchGANDiscriminator

    assert not any("Discriminator" in n and "Unet" not in n for n in dir(ncm) if n != "Discriminator")

    def same(x, w, b, stride):
        k = w.shape[-1]
        pads = []
        for n in reversed(x.shape[-2:]):
            total = max(k - (stride if n % stride == 0 else n % stride), 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), w, b, stride=stride)

    torch.manual_seed(0)
    d = PatchGANDiscriminator(12, channels=(8, 16, 32, 64), context_channels=4).eval()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(hasattr(m, "parametrizations") for m in convs)  # spectral norm on every conv
    g = torch.Generator().manual_seed(9)
    x, y_hat = torch.rand(2, 3, 64, 64, generator=g), torch.randn(2, 12, 4, 4, generator=g)
    with torch.no_grad():
        w = [(m.weight, m.bias) for m in convs]  # eval: the normalised weights, no power step
        lat = F.leaky_relu(same(y_hat, *w[0], 1), 0.2)  # "latent": conv 3x3 to 12, lrelu
        net = torch.cat((x, F.interpolate(lat, size=(64, 64), mode="nearest")), 1)
        for i, stride in enumerate((2, 2, 2, 1)):  # d_conv_head, d_conv_0, d_conv_1, d_conv_a
            net = F.leaky_relu(same(net, *w[i + 1], stride), 0.2)
        ref = same(net, *w[5], 1)  # d_conv_b: 4x4 to one logit per patch
        got = d(x, y_hat)
    assert got.shape == (2, 1, 8, 8) and [c.weight.shape[-1] for c in convs] == [3, 4, 4, 4, 4, 4]
    torch.testing.assert_close(got, ref)


# ---------------------------------------------------------------- rate targeting
#: MS-ILLM's released rate targets (NeuralCompression projects/illm/conf/rate_target/target-*.yaml):
#: target_bpp -> lam_levels; every file has target_factors [1.429, 1.0], lam2_factors [0.5, 1.0]
#: and target_steps = lam2_steps = [50000]. The project configs are not in the installed package.
NC_RATE_TARGETS = {0.00875: (0.0625, 32.0), 0.0175: (0.0625, 16.0), 0.035: (0.0625, 8.0),
                   0.07: (0.0625, 4.0), 0.14: (0.0625, 2.0), 0.3: (0.0625, 1.0),
                   0.45: (0.0625, 0.5), 0.9: (0.0625, 0.25)}


def test_rate_targeting_table_and_weights_equal_nc():
    """rate=target's lambda table and per-image weights are the released TargetRateConfig's,
    applied as NC's rate loss applies them (lam2 above the scheduled target, lam_levels[0]
    below; factors switch at step 50000). Deliberate difference: NC compares the
    hard-quantized bpp, codecx the rate of the likelihoods it is given (the training estimate)."""
    from neuralcompression.loss_fn import TargetRateConfig

    from codecx.losses.rate import ILLM_LAMBDA_A, TargetRate

    assert set(ILLM_LAMBDA_A) == set(NC_RATE_TARGETS)
    for bpp_target, lam_levels in NC_RATE_TARGETS.items():
        cfg = TargetRateConfig(target_bpp=bpp_target, target_factors=[1.429, 1.0], target_steps=[50000],
                               lam_levels=lam_levels, lam2_factors=[0.5, 1.0], lam2_steps=[50000])
        ours = TargetRate(bpp_target)  # lambda_a=null: the table
        assert (ours.lambda_b, ours.lambda_a) == tuple(cfg.lam_levels)
        bpp = torch.tensor([0.5, 0.99, 1.2, 1.43, 1.5, 3.0]) * bpp_target
        for step in (0, 49999, 50000, 10**6):
            phase = 0 if step < cfg.target_steps[0] else 1
            target = cfg.target_bpp * cfg.target_factors[phase]
            lam2 = cfg.lam_levels[1] * cfg.lam2_factors[phase]
            expected = torch.where(bpp > target, torch.tensor(lam2), torch.tensor(cfg.lam_levels[0]))
            torch.testing.assert_close(ours.weights(bpp, step), expected)
