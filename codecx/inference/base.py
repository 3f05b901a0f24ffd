"""The encoder-side hook point: refiners of the latents before they are coded (DESIGN.md)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from codecx.transforms.base import Declares

__all__ = ["EncoderRefiner"]


class EncoderRefiner(Declares, nn.Module):
    """Changes `y` (and `z`) after `g_a` / `h_a`, before they are quantized and coded.

    Only the encoder runs refiners (eval forward and `compress`; never training, never the
    decoder, which needs no signal: the bitstream format is unchanged). `forward(x, codec,
    y, z, lmbda)` gets the unpadded image `x` (1, 3, H, W; a batch of one size when
    `batch_size` > 1), the codec's narrow view (`codecx.models.codec.CodecView`: g_s,
    quantizer, prior, strides, distortion, and `walk` / `code` to run the codec's stages
    through a channel or code latents for real), the current latents (`z` is None for
    backbones without side information) and the rate-distortion trade-off `lmbda` of the
    checkpoint, and returns the refined `(y, z)`.
    """

    #: works only with a scalar quantizer (`Quantizer.scalar`; codecx.config.check's rules read it)
    scalar_only: bool = False
    #: how many images of one size the evaluator hands in one call (codecx.eval.refine; 1: one at a time)
    batch_size: int = 1

    def forward(self, x: Tensor, codec, y: Tensor, z: Optional[Tensor], lmbda: float
                ) -> Tuple[Tensor, Optional[Tensor]]:
        return y, z

    def report(self, i: int = 0) -> Dict[str, Any]:
        """Per-image columns (per_image.csv; `report_columns`, codecx.transforms.base.Declares)
        about image `i` of the last call; none by default."""
        return {}
