"""Codecs to evaluate: rebuilt from a train.py checkpoint (its `codecx_config` and weights) or from
plain config dicts, made ready to code, and the container fingerprint of a codec and its config."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from codecx.coding.container import codec_fingerprint
from codecx.eval.checkpoint import CheckpointError, load_checkpoint
from codecx.lit.module import resize_cdf_buffers
from codecx.models.build import build_codec, non_finite_tensors, transform_items
from codecx.models.codec import Codec
from codecx.models.shallow import restore_legacy_slope


def prepare(codec: Codec) -> Codec:
    """A codec ready to code: CPU, eval mode, CDF tables built (`update(force=True)`)."""
    codec = codec.cpu().eval()
    codec.update(force=True)
    return codec


def codec_from_config(model: Mapping, quantizer: Optional[Mapping] = None,
                      transform: Optional[Mapping] = None, **rest) -> Codec:
    """A codec from plain `model` / `quantizer` config dicts (each one `_target_` node) and the
    latent transforms `transform` (a multi-select {name: node}, e.g. `{"latent_shift": ...}`);
    `rest`: `refine`, `lmbda` (codecx.models.build_codec)."""
    return build_codec({"model": model, "quantizer": quantizer, "transform": transform, **rest})


def load_codec(ckpt_path: str | os.PathLike, quantizer_override: Optional[Mapping] = None,
               transform: Optional[Mapping] = None, scale_levels: Optional[int] = None,
               refine: Optional[Mapping] = None) -> Tuple[Codec, Dict[str, Any]]:
    """(codec ready to code, its config) from a train.py checkpoint's `codecx_config` and weights;
    `quantizer_override` (a `_target_` dict) replaces the trained quantizer, `transform` (a
    multi-select {name: node}) adds decode-time latent transforms after the checkpoint's own
    (eval-time ones without state, e.g. the latent shift `{"latent_shift": node}`),
    `scale_levels` replaces the model's scale table size (64: CompressAI's CDF tables),
    `refine` (a multi-select `refine` node) replaces the encoder refiners."""
    ckpt = load_checkpoint(ckpt_path)
    config = dict(ckpt["codecx_config"])
    config["model"] = dict(config["model"], weights=None)  # the checkpoint holds the weights
    if scale_levels is not None:
        config["model"]["scale_levels"] = int(scale_levels)
    if quantizer_override:
        config["quantizer"] = dict(quantizer_override)
    config.pop("shift", None)  # (a pre-issue-30 config's decode-time shift: none is trained)
    n_own = len(transform_items(config))
    if transform:
        config["transform"] = add_transforms(config.get("transform"), transform)
    if refine is not None:
        config["refine"] = dict(refine)
    codec = build_codec(config)
    added = [n for (n, _), t in list(zip(transform_items(config), codec.transforms))[n_own:] if t.state_dict()]
    if added:
        raise CheckpointError(f"transform {', '.join(added)}: it has trained state, which {ckpt_path} does "
                              "not hold; only eval-time transforms (e.g. latent_shift) can be added at decode "
                              "time, others are trained (train.py transform=[...])")
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


def add_transforms(own: Optional[Mapping], added: Mapping) -> Dict[str, Any]:
    """A multi-select `transform` node: the `own` ones, then the `added` ones (decode-time);
    ValueError for a name in both."""
    own = dict(own or {})
    if "_target_" in added:  # one node (the former `shift` argument): named after its class
        added = {str(added["_target_"]).rsplit(".", 1)[-1].lower(): added}
    twice = sorted(set(own) & set(added))
    if twice:
        raise ValueError(f"transform {', '.join(twice)}: the checkpoint has it already; add another one")
    return {**own, **{k: dict(v) for k, v in added.items()}}


def fingerprint_of(codec: Codec, config: Mapping[str, Any]) -> bytes:
    """The container fingerprint: model (no weights path), quantizer and latent transform config
    + all state. A transform's node enters under `transform` with the others, or alone under
    its declared `fingerprint_key` (the latent shift: `shift`, as in files written before issue
    30, which so still decode)."""
    model = {k: v for k, v in dict(config["model"]).items() if k != "weights"}
    parts: Dict[str, Any] = {"model": model, "quantizer": dict(config["quantizer"])}
    items = transform_items(config)
    if len(items) != len(codec.transforms):
        raise ValueError(f"the config names {len(items)} latent transform(s), the codec has {len(codec.transforms)}")
    alone = set()
    for (name, node), t in zip(items, codec.transforms):
        key = t.fingerprint_key
        if key is None:
            continue
        if key in parts or key == "transform":
            raise ValueError(f"transform {name}: a second one with fingerprint part {key!r} ({type(t).__name__}); "
                             "a codec holds one")
        parts[key] = node
        alone.add(name)
    common = dict(config.get("transform") or {})
    common = {} if (None in alone) else {k: v for k, v in common.items() if k not in alone}
    if common:  # the decoder needs the same latent transforms
        parts["transform"] = common
    return codec_fingerprint(codec, parts)
