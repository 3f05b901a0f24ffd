"""Codecs to evaluate: rebuilt from a train.py checkpoint (its `codecx_config` and weights) or from
plain config dicts, made ready to code, and the container fingerprint of a codec and its config."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from codecx.coding.container import codec_fingerprint
from codecx.eval.checkpoint import CheckpointError, load_checkpoint
from codecx.lit.module import resize_cdf_buffers
from codecx.models.build import build_codec, non_finite_tensors
from codecx.models.codec import Codec
from codecx.models.shallow import restore_legacy_slope


def prepare(codec: Codec) -> Codec:
    """A codec ready to code: CPU, eval mode, CDF tables built (`update(force=True)`)."""
    codec = codec.cpu().eval()
    codec.update(force=True)
    return codec


def codec_from_config(model: Mapping, quantizer: Optional[Mapping] = None,
                      shift: Optional[Mapping] = None, **rest) -> Codec:
    """A codec from plain `model` / `quantizer` / `shift` config dicts (each one `_target_` node;
    no `shift`: no latent shift); `rest`: `transform`, `refine`, `lmbda` (codecx.models.build_codec)."""
    return build_codec({"model": model, "quantizer": quantizer, "shift": shift, **rest})


def load_codec(ckpt_path: str | os.PathLike, quantizer_override: Optional[Mapping] = None,
               shift: Optional[Mapping] = None, scale_levels: Optional[int] = None,
               refine: Optional[Mapping] = None) -> Tuple[Codec, Dict[str, Any]]:
    """(codec ready to code, its config) from a train.py checkpoint's `codecx_config` and weights;
    `quantizer_override` (a `_target_` dict) replaces the trained quantizer, `shift` (a
    `_target_` dict of codecx.inference.latent_shift.LatentShift) adds a latent shift,
    `scale_levels` replaces the model's scale table size (64: CompressAI's CDF tables),
    `refine` (a multi-select `refine` node) replaces the encoder refiners."""
    ckpt = load_checkpoint(ckpt_path)
    config = dict(ckpt["codecx_config"])
    config["model"] = dict(config["model"], weights=None)  # the checkpoint holds the weights
    if scale_levels is not None:
        config["model"]["scale_levels"] = int(scale_levels)
    if quantizer_override:
        config["quantizer"] = dict(quantizer_override)
    config.pop("shift", None)
    if shift:
        config["shift"] = dict(shift)
    if refine is not None:
        config["refine"] = dict(refine)
    codec = build_codec(config)
    restore_legacy_slope(codec.backbone, config["model"])  # a CNN analysis trained with slope 0.01
    state = {k[len("codec."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("codec.")}
    bad = non_finite_tensors(state)
    if bad:  # NaN weights make NaN latents (which the rANS coder cannot code) or NaN images
        raise CheckpointError(f"checkpoint {ckpt_path}: parameters are not finite (NaN/Inf in "
                              f"{', '.join('codec.' + b for b in bad)}); it holds a diverged or damaged "
                              "model: use an earlier checkpoint (last.prev.ckpt, best.ckpt, step=K.ckpt)")
    if quantizer_override:  # the new quantizer keeps its own state (if any)
        own = codec.quantizer.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("quantizer.")}
        state.update({f"quantizer.{k}": v for k, v in own.items()})
    resize_cdf_buffers(codec, state)
    try:
        codec.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt_path}: weights do not fit its own config "
                              f"({config['model']}):\n{e}") from None
    return prepare(codec), config


def fingerprint_of(codec: Codec, config: Mapping[str, Any]) -> bytes:
    """The container fingerprint: model, quantizer and shift config (no weights path) + all state."""
    model = {k: v for k, v in dict(config["model"]).items() if k != "weights"}
    parts = {"model": model, "quantizer": dict(config["quantizer"])}
    if config.get("shift"):  # the decoder needs the same candidate steps
        parts["shift"] = dict(config["shift"])
    if config.get("transform"):  # and the same latent transforms
        parts["transform"] = dict(config["transform"])
    return codec_fingerprint(codec, parts)
