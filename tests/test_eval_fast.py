"""The faster evaluation path (issue 33 item 4): the channels-last synthesis decodes the same
images, the rate estimate is an option; speed itself is `make bench --only eval`, never a test."""
from __future__ import annotations

import torch

from codecx.eval.code import code_image
from conftest import tiny_codec


def test_channels_last_synthesis_same_images_and_streams():
    """Issue 33 item 4: the channels-last synthesis decodes the same image (where it applies:
    transposed convolutions and GDN only), in `Codec.decompress` too; `estimate=False` drops
    `bpp_est` and nothing else."""
    from codecx.eval.code import measure
    from codecx.quantizers.channels import exact_in_channels_last

    torch.manual_seed(0)
    codec = tiny_codec().eval()
    codec.update(force=True)
    x = torch.rand(1, 3, 192, 192)  # MS-SSIM needs 161 px a side
    row, x_hat = code_image(codec, x)
    row_nchw, x_hat_nchw = code_image(codec, x, channels_last=False)
    assert torch.equal(x_hat, x_hat_nchw) and x_hat.is_contiguous()
    assert row["bytes"] == row_nchw["bytes"] and row["psnr-rgb"] == row_nchw["psnr-rgb"]
    with torch.no_grad():
        assert torch.equal(x_hat, codec(x).x_hat.clamp(0, 1))  # the eval forward, NCHW
        c = codec.compress(x, estimate=False)  # Codec.decompress itself (codecx decompress): the same
        args = (c["strings"], c["shape"], c["y_shape"], c["z_shape"])
        assert torch.equal(codec.decompress(*args), codec.decompress(*args, channels_last=False))
    assert exact_in_channels_last(codec.backbone.g_s)
    assert not exact_in_channels_last(tiny_codec("cheng_anchor", N=16, M=16).backbone.g_s)  # sub-pixel
    lean, _ = measure(codec, x, estimate=False)
    assert "bpp_est" not in lean and "bpp_est" in row
    assert {k: v for k, v in row.items() if "time" not in k and k != "bpp_est"} == \
        {k: v for k, v in lean.items() if "time" not in k and k != "hf_ratio"}


def test_decoder_probes_channels_last_and_falls_back_to_nchw():
    """`Codec.decompress` runs g_s channels-last only where a probe of that shape agreed bit for
    bit on this CPU (`channels_last_gives_the_same`, cached per shape); where it did not, NCHW."""
    from codecx.quantizers import channels

    torch.manual_seed(0)
    codec = tiny_codec().eval()
    codec.update(force=True)
    g_s = codec.backbone.g_s
    x = torch.rand(1, 3, 64, 64)
    seen = []
    nhwc = torch.channels_last
    hook = g_s.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=nhwc)))
    try:
        with torch.no_grad():
            c = codec.compress(x, estimate=False)
            args = (c["strings"], c["shape"], c["y_shape"], c["z_shape"])
            first = codec.decompress(*args)
            (key, same), = channels._SAME_IN_CHANNELS_LAST[g_s].items()
            assert same and key[0][2:] == tuple(codec.backbone.latent_shapes(64, 64)[0])  # y_hat's (h, w)
            seen.clear()
            codec.decompress(*args)
            assert seen == [True]  # the cached probe: one g_s pass, channels-last
            channels._SAME_IN_CHANNELS_LAST[g_s][key] = False  # a CPU whose kernels differ
            seen.clear()
            again = codec.decompress(*args)
            assert seen == [False] and torch.equal(first, again)
    finally:
        hook.remove()
        channels._SAME_IN_CHANNELS_LAST.pop(g_s, None)
