"""Backbones (CompressAI architectures split into stages) and the codec pipeline."""
from codecx.models.backbones import BACKBONES, ZOO_NAMES, Backbone
from codecx.models.codec import Codec
from codecx.models.build import build_backbone, build_codec, load_weights

__all__ = ["BACKBONES", "ZOO_NAMES", "Backbone", "Codec", "build_backbone", "build_codec", "load_weights"]
