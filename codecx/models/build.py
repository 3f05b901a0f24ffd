"""Build a backbone by name and load CompressAI state dicts into it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

import torch

from codecx.models.backbones import BACKBONES, SCALE_LEVELS, Backbone


#: the quantizer of a config without one (a bare CompressAI state dict): every scalar one codes alike;
#: keyed as the quantizer configs are (`scale_keys: nearest`), so `quantizer=hex` beside it compares
#: quantizers only (CompressAI's own bitstreams: `quantizer=noise quantizer.scale_keys=up`)
DEFAULT_QUANTIZER = {"_target_": "codecx.quantizers.NoiseQuantizer", "scale_keys": "nearest"}


def non_finite_tensors(state: Mapping[str, Any], limit: int = 3) -> List[str]:
    """Names of (at most `limit`) floating-point tensors of a state dict holding NaN or Inf."""
    bad = []
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def build_backbone(name: str, N: int = 128, M: Optional[int] = 192,
                   weights: Optional[str] = None, scale_levels: int = SCALE_LEVELS) -> Backbone:
    """Instantiate backbone `name` (one of BACKBONES) and optionally load `weights`;
    `scale_levels`: the scale table of its Gaussian CDF tables (64: CompressAI's own)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](N=N, M=M, weights=weights, scale_levels=scale_levels, name=name)


def load_weights(model: Backbone, path: str) -> Backbone:
    """Load a CompressAI state dict (bare, or under "state_dict") saved from the zoo model
    of the same architecture, the backbone of a codecx train.py checkpoint (to fine-tune
    it, e.g. with another quantizer), or into model=hific a NeuralCompression `HiFiCAutoencoder`
    state dict (MS-ILLM's released `msillm_*.ckpt`; keys mapped by `codecx.models.hific
    .state_from_nc`); CDF buffers of another size are resized (CompressAI)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"model.weights={path}: no such file. Point it at a state dict saved with "
            "torch.save(compressai_model.state_dict(), PATH) (nothing is downloaded)."
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem
        raise ValueError(f"model.weights={path}: not a readable PyTorch state dict ({e})") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"model.weights={path}: expected a state dict, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    prefix = "codec.backbone."  # a codecx checkpoint: its backbone's part
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    from codecx.models.hific import HiFiC, is_nc_state, state_from_nc

    if is_nc_state(state):  # NeuralCompression's HiFiCAutoencoder (MS-ILLM's released files)
        if not isinstance(model, HiFiC):
            raise ValueError(f"model.weights={path} is a NeuralCompression HiFiCAutoencoder state dict "
                             f"(MS-ILLM's released weights): use model=hific, not {type(model).__name__}")
        state = state_from_nc(state)
    bad = non_finite_tensors(state)
    if bad:  # a NaN in g_a would hang the rANS encoder; refuse it here, naming the tensor
        raise ValueError(f"model.weights={path}: parameters are not finite (NaN/Inf in {', '.join(bad)}); "
                         "the file holds a diverged or damaged model: use an earlier checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"model.weights={path} does not fit {type(model).__name__}"
            f"(N={getattr(model, 'N', '?')}, M={getattr(model, 'M', '?')}): check model= "
            f"and model.N / model.M.\n{e}"
        ) from e
    return model


def instantiate_list(node: Optional[Mapping[str, Any]]) -> List[Any]:
    """The objects of a multi-select group node (`transform`, `refine`): one `_target_` node per
    name, in order; a single `_target_` node gives one object; empty or None gives none."""
    from hydra.utils import instantiate

    if not node:
        return []
    node = dict(node)
    if "_target_" in node:
        return [instantiate(node)]
    return [instantiate(dict(v)) for v in node.values() if v]


def build_codec(config: Mapping[str, Any]):
    """The Codec of a resolved config (train.py's or a checkpoint's `codecx_config`): `model`,
    `quantizer`, `transform` (latent transforms, in order), `refine` (encoder refiners),
    `shift` (a latent shift, appended after the transforms) and `lmbda`."""
    from hydra.utils import instantiate

    from codecx.models.codec import Codec

    quantizer = config.get("quantizer") or DEFAULT_QUANTIZER
    transforms = instantiate_list(config.get("transform")) + instantiate_list(config.get("shift"))
    return Codec(instantiate(dict(config["model"])), instantiate(dict(quantizer)), transforms=transforms,
                 refiners=instantiate_list(config.get("refine")), lmbda=config.get("lmbda"))
