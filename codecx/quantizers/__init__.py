"""Quantizers: one module each, all implementing :class:`Quantizer`."""
from codecx.quantizers.base import Quantizer
from codecx.quantizers.lattice import LatticeQuantizer
from codecx.quantizers.scalar import MixedQuantizer, NoiseQuantizer, ScalarQuantizer, STEQuantizer, ste_round

__all__ = ["Quantizer", "LatticeQuantizer", "ScalarQuantizer", "NoiseQuantizer", "STEQuantizer", "MixedQuantizer",
           "ste_round"]
