"""Regularizers: one module each, all implementing :class:`Regularizer`."""
from codecx.regularizers.base import AuxPhase, NoRegularizer, Regularizer

__all__ = ["AuxPhase", "Regularizer", "NoRegularizer"]
