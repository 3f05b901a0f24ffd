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
