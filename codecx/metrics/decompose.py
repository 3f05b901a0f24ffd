"""The reconstruction-error decomposition MSE_t / MSE_a / MSE_q (paper 000, supplement eq. 11)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from codecx.metrics.rd import to_uint8

#: per-image columns, in CSV order: the three errors (8-bit levels squared) and two ratios
DECOMPOSE_KEYS = ("mse_t", "mse_a", "mse_q", "mse_a_ratio", "mse_q_ratio")


@torch.no_grad()
def unquantized_reconstruction(codec, x: Tensor) -> Tensor:
    """X_uq = g_s(y), y = g_a(x) without quantization (and without latent transforms), for one
    image (1,3,H,W); clamped to [0, 1] and cropped like the decoded image."""
    from codecx.models.codec import pad_to

    bb = codec.backbone
    h, w = x.shape[-2:]
    y = bb.g_a(pad_to(x, bb.stride))
    return bb.g_s(y)[..., :h, :w].clamp(0, 1)


def _mse(a: Tensor, b: Tensor) -> float:
    return torch.mean((to_uint8(a) - to_uint8(b)) ** 2).item()


@torch.no_grad()
def decompose(codec, x: Tensor, x_hat: Tensor) -> Dict[str, float]:
    """Per image: `mse_t` = MSE(X, X_q) with X_q the decoded image `x_hat`, `mse_a` = MSE(X, X_uq),
    `mse_q` = MSE(X_uq, X_q) (paper 000, eq. 11), all on 8-bit rounded images (the MSE of the
    eval PSNR: psnr = 10 log10(255^2 / mse_t)), and the ratios `mse_a / mse_t`, `mse_q / mse_t`
    (paper 000, Fig. 9; nan when mse_t = 0). `codec` in eval mode."""
    x_uq = unquantized_reconstruction(codec, x)
    mse_t, mse_a, mse_q = _mse(x, x_hat), _mse(x, x_uq), _mse(x_uq, x_hat)
    ratio = (lambda v: v / mse_t) if mse_t > 0 else (lambda v: float("nan"))  # noqa: E731
    return {"mse_t": mse_t, "mse_a": mse_a, "mse_q": mse_q,
            "mse_a_ratio": ratio(mse_a), "mse_q_ratio": ratio(mse_q)}
