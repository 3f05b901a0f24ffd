"""Distortion terms of the codec loss (`distortion=` group), in the units `lmbda` multiplies."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, cast

import torch
from torch import Tensor, nn

__all__ = ["Distortion", "MSE", "MSSSIM", "psnr", "LPIPSLoss", "MSELPIPS", "normalize_features"]


def psnr(mse: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB from a mean squared error."""
    return 10 * torch.log10(peak**2 / mse.clamp_min(1e-12))


class Distortion(nn.Module):
    """`forward(x, x_hat)` -> (the distortion `lmbda` multiplies, metrics); images in [0, 1].

    Every distortion also reports `mse` and `psnr` so that runs stay comparable.
    """

    #: the smallest training crop (px per side) it works on (codecx.config.check's rules read it)
    min_size: int = 0

    def forward(self, x: Tensor, x_hat: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError

    @staticmethod
    def mse_metrics(x: Tensor, x_hat: Tensor) -> Dict[str, Tensor]:
        mse = torch.mean((x_hat - x) ** 2)
        return {"mse": mse, "psnr": psnr(mse.detach())}


class MSE(Distortion):
    """distortion=mse: `255^2 * MSE` (CompressAI's zoo training, Ballé et al. 2018)."""

    def forward(self, x, x_hat):
        m = self.mse_metrics(x, x_hat)
        return 255**2 * m["mse"], m


class MSSSIM(Distortion):
    """distortion=ms_ssim: `1 - MS-SSIM` (Wang et al. 2003; CompressAI's MS-SSIM models,
    lambdas 2.4 ... 220). Images need at least 161 px per side for the 5 scales."""

    min_size = 161  # (11 - 1) * 2**4 + 1: an 11-px window at the 5th scale

    def forward(self, x, x_hat):
        from pytorch_msssim import ms_ssim

        m = self.mse_metrics(x, x_hat)
        s = ms_ssim(x_hat, x, data_range=1.0, size_average=True)
        m["ms_ssim"] = s.detach()
        return 1 - s, m


# --------------------------------------------------------------------------- MS-ILLM / HiFiC
#: LPIPS backbones: torchvision `features` slices ending at each compared ReLU, their widths,
#: and the torchvision ImageNet weights file the backbone is loaded from (never downloaded)
LPIPS_NETS = {
    "alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256), "alexnet-owt-7be5be79.pth"),
    "vgg": ((4, 9, 16, 23, 30), (64, 128, 256, 512, 512), "vgg16-397923af.pth"),
}


def normalize_features(f: Tensor, eps: float = 1e-8) -> Tensor:
    """Unit-normalise feature vectors over channels with eps *inside* the square root, so the
    gradient stays finite where a feature vector is zero (MS-ILLM's LPIPS-as-a-loss fix;
    LPIPS itself divides by `sqrt(sum f^2) + eps`, whose gradient is infinite at 0)."""
    return f / torch.sqrt(torch.sum(f * f + eps, dim=1, keepdim=True))


class LPIPSLoss(nn.Module):
    shift: Tensor  # buffers: ImageNet normalisation of [-1, 1] images (lpips' ScalingLayer)
    scale: Tensor

    """LPIPS of Zhang et al. (CVPR 2018), v0.1, as a differentiable loss (mean over the batch).

    Backbone (AlexNet or VGG16 `features`) from the torchvision ImageNet weights file at
    `weights` (or the torch hub cache; a missing file raises one error naming it); the linear
    layers from the weights shipped inside the `lpips` package; feature normalisation with the
    eps inside the square root (:func:`normalize_features`). Frozen, always in eval mode.
    """

    def __init__(self, net: str = "alex", weights: Optional[str] = None, option: str = "lpips_weights"):
        super().__init__()
        import lpips
        from torchvision import models as tvm

        from codecx.metrics.weights import resolve_weights

        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net={net!r}: choose one of {sorted(LPIPS_NETS)}")
        ends, widths, filename = LPIPS_NETS[net]
        path = resolve_weights(filename, weights, option=option,
                               what=f"LPIPS {net} backbone (torchvision ImageNet)")
        if net == "alex":
            features = tvm.alexnet(weights=None).features
        else:  # VGG16's features only (its 120M-parameter classifier is never used)
            features = tvm.vgg.make_layers(tvm.vgg.cfgs["D"])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.")})
        except Exception as e:  # noqa: BLE001 - any unreadable / mismatched file
            raise ValueError(f"{option}={path} is not a torchvision {net} state dict "
                             f"(torch.save(torchvision.models.{'alexnet' if net == 'alex' else 'vgg16'}"
                             f"(weights=...).state_dict(), PATH)): {e}") from e
        starts = (0, *ends[:-1])
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, ends))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            cast(nn.Conv2d, lin).weight.data.copy_(lin_state[f"lin{k}.model.1.weight"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        return super().train(False)

    def per_image(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """LPIPS of each image, shape (B,), for [0, 1] images."""
        a = ((2 * x - 1) - self.shift) / self.scale
        b = ((2 * x_hat - 1) - self.shift) / self.scale
        total = x.new_zeros(x.size(0))
        for sl, lin in zip(self.slices, self.lins):
            a, b = sl(a), sl(b)
            d = (normalize_features(a) - normalize_features(b)) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return self.per_image(x, x_hat).mean()


class MSELPIPS(Distortion):
    """distortion=mse_lpips: `mse_weight * MSE([0,1]) + LPIPS-Alex` (MS-ILLM eq. 9, HiFiC).

    The whole weighted sum is the distortion, so `lmbda` is HiFiC's overall distortion weight:
    with rate targeting (`rate=target`, which weighs the rate itself) set `lmbda=1`.
    `mse_weight=150` on [0, 1] images equals HiFiC's 0.00234 * MSE on [0, 255]. `lpips_weights`:
    the torchvision AlexNet file `alexnet-owt-7be5be79.pth` (a path or its folder).
    """

    def __init__(self, mse_weight: float = 150.0, lpips_weight: float = 1.0, net: str = "alex",
                 lpips_weights: Optional[str] = None):
        super().__init__()
        self.mse_weight, self.lpips_weight = float(mse_weight), float(lpips_weight)
        self.lpips = LPIPSLoss(net, lpips_weights, option="distortion.lpips_weights")

    def forward(self, x, x_hat):
        m = self.mse_metrics(x, x_hat)
        lp = self.lpips(x, x_hat)
        m["lpips"] = lp.detach()
        return self.mse_weight * m["mse"] + self.lpips_weight * lp, m
