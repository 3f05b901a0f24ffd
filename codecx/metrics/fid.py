"""Patch-based FID / KID as in HiFiC and MS-ILLM, on torch-fidelity's InceptionV3 and statistics.

Samples of an image: 256-px tiles on a grid, plus a grid shifted by half a patch, which has
full tiles only where both sides are >= 1.5 patches (384 px), as in the released MS-ILLM code;
an image with a side below the patch size is one sample, whole."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from codecx.metrics.weights import MissingWeightsError, resolve_weights

__all__ = ["extract_patches", "to_uint8", "InceptionFeatures", "FIDKID", "MissingWeightsError"]


def _grid(img: Tensor, p: int) -> Tensor:
    c, h, w = img.shape
    if h < p or w < p:
        return img.new_empty(0, c, p, p)
    img = img[:, : h // p * p, : w // p * p]
    return img.unfold(1, p, p).unfold(2, p, p).permute(1, 2, 0, 3, 4).reshape(-1, c, p, p)


def extract_patches(img: Tensor, patch: int = 256) -> Tensor:
    """Full patch×patch tiles of (C,H,W) `img` on a grid and one shifted by patch//2 (Mentzer et al. 2020, HiFiC)."""
    if img.dim() != 3:
        raise ValueError(f"expected a (C,H,W) image, got shape {tuple(img.shape)}")
    s = patch // 2
    return torch.cat([_grid(img, patch), _grid(img[:, s:, s:], patch)])


def to_uint8(x: Tensor) -> Tensor:
    """[0,1] floats to the uint8 [0,255] that torch-fidelity's Inception expects, by rounding; uint8 passes as is."""
    return x if x.dtype == torch.uint8 else (x * 255).round().clamp(0, 255).to(torch.uint8)


class InceptionFeatures(torch.nn.Module):
    """torch-fidelity 'inception-v3-compat' 2048-d pool features from a local weights file (Heusel et al. 2017, FID)."""

    def __init__(self, weights: str | os.PathLike | None = None, option: str = "metrics.fid.weights"):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

        path = resolve_weights(URL_INCEPTION_V3.rsplit("/", 1)[-1], weights, option=option,
                               url=URL_INCEPTION_V3, what="FID/KID InceptionV3")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(to_uint8(x).to(self.net.fc.weight.device))[0]


class FIDKID:
    """Accumulates patch features of real/fake images; FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018)."""

    def __init__(self, feature_extractor: Callable[[Tensor], Tensor] | None = None,
                 weights: str | os.PathLike | None = None, patch: int = 256, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, batch_size: int = 64, device: str | torch.device | None = None,
                 seed: int = 2020, option: str = "metrics.fid.weights"):
        if feature_extractor is None:  # `option`: how the weights setting is named in a missing-file error
            feature_extractor = InceptionFeatures(weights, option).to(device or "cpu")
        self.extractor = feature_extractor
        self.patch, self.kid_subsets, self.kid_subset_size = patch, kid_subsets, kid_subset_size
        self.batch_size, self.seed = batch_size, seed
        self.reset()

    def reset(self) -> None:
        self.real: list[Tensor] = []
        self.fake: list[Tensor] = []

    @torch.no_grad()
    def _features(self, imgs: Tensor) -> Tensor:
        """Features of the patches of `imgs` (`extract_patches`), or of the whole images when a
        side is below the patch size (one sample per image; Inception resizes it to 299 px)."""
        imgs = imgs.detach()
        imgs = imgs[None] if imgs.dim() == 3 else imgs
        if min(imgs.shape[-2:]) < self.patch:
            patches = imgs
        else:
            patches = torch.cat([extract_patches(im, self.patch) for im in imgs])
        feats = [self.extractor(to_uint8(b)) for b in patches.split(self.batch_size)] if len(patches) else []
        return torch.cat(feats).float().cpu() if feats else torch.empty(0, 0)

    def update(self, real: Tensor, fake: Tensor) -> None:
        """Add a batch (B,3,H,W) or image (3,H,W) pair in [0,1]; both are patched (whole images
        when a side is below the patch size) and featurised."""
        if real.shape != fake.shape:
            raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} shapes differ")
        self.real.append(self._features(real))
        self.fake.append(self._features(fake))

    def compute(self) -> dict[str, float]:
        """{'fid', 'kid', 'kid_std'} over all accumulated patches; KID subset size clamped to the patch count."""
        real = torch.cat([f for f in self.real if len(f)] or [torch.empty(0, 0)])
        fake = torch.cat([f for f in self.fake if len(f)] or [torch.empty(0, 0)])
        n = min(len(real), len(fake))
        if n < 2:
            raise ValueError(f"FID/KID need >= 2 samples (patches, or whole images smaller than patch={self.patch}) "
                             f"per set, got {n}")
        fid = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
        kid = kid_features_to_metric(real, fake, kid_subsets=self.kid_subsets, verbose=False, rng_seed=self.seed,
                                     kid_subset_size=min(self.kid_subset_size, n))
        return {"fid": fid[KEY_METRIC_FID], "kid": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD]}
