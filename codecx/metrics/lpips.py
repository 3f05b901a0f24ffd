"""LPIPS wrapper that never downloads: backbone weights come from a local file or the torch hub cache."""
from __future__ import annotations

import os
import warnings

import lpips
import torch
from torch import Tensor
from torchvision import models as tvm

from codecx.metrics.weights import MissingWeightsError, resolve_weights

__all__ = ["LPIPSMetric", "BACKBONE_WEIGHTS", "MissingWeightsError"]

BACKBONE_WEIGHTS = {  # lpips net -> torchvision ImageNet weights whose file the backbone is loaded from
    "alex": tvm.AlexNet_Weights.IMAGENET1K_V1, "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}


class LPIPSMetric(torch.nn.Module):
    """Per-image LPIPS distance of [0,1] images (Zhang et al. 2018); frozen, always in eval mode."""

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None, version: str = "0.1",
                 option: str = "metrics.lpips.weights"):
        super().__init__()
        if net not in BACKBONE_WEIGHTS:
            raise ValueError(f"net must be one of {sorted(BACKBONE_WEIGHTS)}, got {net!r}")
        url = BACKBONE_WEIGHTS[net].url
        path = resolve_weights(url.rsplit("/", 1)[-1], weights, option=option, url=url,
                               what=f"LPIPS {net} backbone (torchvision ImageNet)")
        with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            # pretrained=True: linear layers from the weights shipped inside the lpips package;
            # pnet_rand=True: random backbone, so torchvision never downloads; it is overwritten below.
            self.model = lpips.LPIPS(pretrained=True, net=net, version=version, pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # lpips slices keep torchvision's `features` indices: sliceK.<i>.weight <- features.<i>.weight
        keys = [k for k in self.model.net.state_dict()]
        missing = [k for k in keys if "features." + k.split(".", 1)[1] not in state]
        if missing:
            raise ValueError(f"{path} is not a torchvision {net} state_dict (no features.* entries for {missing[:3]})")
        self.model.net.load_state_dict({k: state["features." + k.split(".", 1)[1]] for k in keys})
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "LPIPSMetric":
        return super().train(False)  # dropout in the linear layers must stay off, also when used as a loss

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS per image, shape (B,), for (B,3,H,W) inputs in [0,1]; differentiable w.r.t. the inputs."""
        return self.model(x, y, normalize=True).flatten()
