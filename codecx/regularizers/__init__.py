"""Regularizers: one module each, all implementing :class:`Regularizer`."""
from codecx.regularizers.base import AuxPhase, NoRegularizer, Regularizer
from codecx.regularizers.cse import CSERegularizer

__all__ = ["AuxPhase", "Regularizer", "NoRegularizer", "CSERegularizer"]
