"""Small result dataclasses passed between the stages of the codec pipeline (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor


@dataclass
class EntropyParams:
    """Parameters of the latent prior p(y | z_hat) for one latent tensor `y`.

    `means` and `scales` are per element (Minnen et al. 2018, mean-scale hyperprior);
    `scales` is None for the factorized prior (Ballé et al. 2017), whose `means` are the
    entropy bottleneck's per-channel medians. `entropy_model` is the CompressAI entropy model
    that owns the likelihood function and the quantized CDF tables used for real coding.
    """

    means: Tensor
    scales: Optional[Tensor]
    entropy_model: torch.nn.Module

    @property
    def gaussian(self) -> bool:
        return isinstance(self.entropy_model, GaussianConditional)

    def likelihood(self, v: Tensor) -> Tensor:
        """Probability mass of the unit bin centred on `v`, lower-bounded as in CompressAI."""
        m = self.entropy_model
        if isinstance(m, GaussianConditional):
            lik = m._likelihood(v, self.scales, self.means)
        elif isinstance(m, EntropyBottleneck):
            # the bottleneck's density works channel-first: (C, 1, -1)
            perm = (1, 0, *range(2, v.dim()))
            vc = v.permute(*perm).contiguous()
            lik, _, _ = m._likelihood(vc.reshape(vc.size(0), 1, -1))
            lik = lik.reshape(vc.shape).permute(*perm).contiguous()
        else:  # pragma: no cover - guarded by the backbones
            raise TypeError(f"unsupported entropy model {type(m).__name__}")
        return m.likelihood_lower_bound(lik) if m.use_likelihood_bound else lik

    def indexes(self) -> Tensor:
        """Index of the CDF table each element is coded with."""
        m = self.entropy_model
        if isinstance(m, GaussianConditional):
            from codecx.coding.scale_keys import key_indexes

            # == m.build_indexes(self.scales) (CompressAI's rule "up"), one search instead of a pass per level
            return key_indexes(m.scale_table, m.lower_bound_scale(self.scales), "up").to(torch.int32)
        c = self.means.size(1)
        shape = [1] * self.means.dim()
        shape[1] = c
        idx = torch.arange(c, device=self.means.device, dtype=torch.int32).view(shape)
        return idx.expand_as(self.means)

    def __getitem__(self, index) -> "EntropyParams":
        """The parameters of `y[index]` (used by the serial context decoders)."""
        scales = None if self.scales is None else self.scales[index]
        return EntropyParams(self.means[index], scales, self.entropy_model)


@dataclass
class QuantizerOutput:
    """What a quantizer hands to the synthesis transform and to the rate term."""

    y_hat: Tensor
    likelihoods: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)
    #: loss terms this stage adds to the codec loss (already weighted)
    losses: Dict[str, Tensor] = field(default_factory=dict)


@dataclass
class CodecOutput:
    """Everything one pass of the codec pipeline produced (train or eval mode)."""

    x_hat: Tensor
    y: Tensor
    y_hat: Tensor
    likelihoods: Dict[str, Tensor]
    params: EntropyParams
    z_hat: Optional[Tensor] = None
    metrics: Dict[str, Tensor] = field(default_factory=dict)
    #: loss terms the stages added (quantizer, latent transforms), already weighted
    losses: Dict[str, Tensor] = field(default_factory=dict)


@dataclass
class RegOutput:
    """A regularizer's contribution to the codec loss, and what to log."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)
