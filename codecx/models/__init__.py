"""Backbones (CompressAI architectures split into stages) and the codec pipeline."""
from codecx.models.backbones import ZOO_NAMES, Backbone
from codecx.models.build import BACKBONES, build_backbone, build_codec, load_weights
from codecx.models.codec import Codec

__all__ = ["BACKBONES", "ZOO_NAMES", "Backbone", "Codec", "build_backbone", "build_codec", "load_weights"]
