"""The RD metrics of codecx.metrics.rd against their references."""
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim

from codecx.metrics.rd import msssim_of_uint8, psnr_of_uint8, to_uint8
from conftest import KODAK


@pytest.mark.parametrize("size", [(192, 256), (171, 257)])  # even and odd sides: avg-pool padding
def test_msssim_equals_pytorch_msssim_in_any_memory_format(size):
    """MS-SSIM (Wang et al. 2003) runs channels-last for speed: the value pytorch_msssim gives
    on NCHW tensors (what CompressAI's eval reports), whatever the inputs' layouts."""
    img = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"), dtype="float32") / 255
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)[..., : size[0], : size[1]]  # NHWC strides
    g = torch.Generator().manual_seed(0)
    x_hat = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1).contiguous()
    x8, x_hat8 = to_uint8(x), to_uint8(x_hat)
    ref = ms_ssim(x8.contiguous(), x_hat8.contiguous(), data_range=255.0).item()
    assert 0.5 < ref < 0.999
    for a, b in ((x8, x_hat8), (x8.contiguous(), x_hat8), (x8.contiguous(), x_hat8.contiguous())):
        assert msssim_of_uint8(a, b) == pytest.approx(ref, abs=1e-6)
    assert psnr_of_uint8(x8, x_hat8) == pytest.approx(psnr_of_uint8(x8.contiguous(), x_hat8), abs=1e-9)
