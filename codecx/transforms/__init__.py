"""codecx.transforms: decoder-side latent transforms between `y_hat` and `g_s` (DESIGN.md)."""
from codecx.transforms.base import LatentTransform, WalkState
from codecx.transforms.latent_mse import Compensation, LatentMSE
from codecx.transforms.lpc import FPC, LPC
from codecx.transforms.lrp import LRP

__all__ = ["LatentTransform", "WalkState", "Compensation", "LatentMSE", "LRP", "LPC", "FPC"]
