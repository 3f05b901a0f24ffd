"""Small result dataclasses passed between the stages of the codec pipeline (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor


@dataclass
class EntropyParams:
    """Parameters of the latent prior p(y | z_hat) for one latent tensor `y`.

    `means` and `scales` are per element (Minnen et al. 2018, mean-scale hyperprior);
    `scales` is None for a factorized prior (Ballé et al. 2017, arXiv 1611.01704), whose
    `means` are the entropy bottleneck's per-channel medians (the coding grid) and whose
    `density` the backbone gives (`Backbone.side_prior`). `entropy_model` is the CompressAI
    entropy model that owns the likelihood bound and the quantized CDF tables used for real coding.
    """

    means: Tensor
    scales: Optional[Tensor]
    entropy_model: torch.nn.Module
    #: the unit-bin mass of a prior without scales (None: the Gaussian conditional's, from means and scales)
    density: Optional[Callable[[Tensor], Tensor]] = None

    @property
    def gaussian(self) -> bool:
        return self.scales is not None

    def likelihood(self, v: Tensor) -> Tensor:
        """Probability mass of the unit bin centred on `v`, lower-bounded as in CompressAI."""
        m: Any = self.entropy_model
        lik = self.density(v) if self.density is not None else m._likelihood(v, self.scales, self.means)
        return m.likelihood_lower_bound(lik) if m.use_likelihood_bound else lik

    def __getitem__(self, index) -> "EntropyParams":
        """The parameters of `y[index]` (used by the serial context decoders)."""
        scales = None if self.scales is None else self.scales[index]
        return EntropyParams(self.means[index], scales, self.entropy_model, self.density)

    def detach(self) -> "EntropyParams":
        """The same prior cut from the graph."""
        scales = None if self.scales is None else self.scales.detach()
        return EntropyParams(self.means.detach(), scales, self.entropy_model, self.density)


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
    """Everything one walk of the codec pipeline produced, whatever its channel
    (codecx.quantizers.channels): training, eval, encoding, decoding, no quantization, SGA."""

    #: the reconstruction cropped to the image (None where the channel runs no g_s: encoding)
    x_hat: Optional[Tensor]
    #: the coded latent (None at the decoder)
    y: Optional[Tensor]
    y_hat: Tensor
    #: "y" (None when encoding without the estimate) and "z" (with side information)
    likelihoods: Dict[str, Optional[Tensor]]
    params: EntropyParams
    z_hat: Optional[Tensor] = None
    metrics: Dict[str, Tensor] = field(default_factory=dict)
    #: loss terms the stages added (quantizer, latent transforms), already weighted
    losses: Dict[str, Tensor] = field(default_factory=dict)
    #: the streams `[y, z]` (z with side information) of an encoding walk, None otherwise
    streams: Optional[List[bytes]] = None
    #: the header options the signalling transforms chose (encoder) or read (decoder)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RegOutput:
    """A regularizer's contribution to the codec loss, and what to log."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)
