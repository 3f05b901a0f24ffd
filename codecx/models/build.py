"""The backbone registry (one entry per `codecx/conf/model/NAME.yaml`), building a backbone by
name, and loading CompressAI / codecx / NeuralCompression state dicts into one."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional

import torch

from codecx.conf import CONF_DIR

if TYPE_CHECKING:
    from codecx.models.backbones import Backbone

#: the model group's folder: each NAME.yaml is a backbone config (`_target_`: its class)
MODEL_DIR = Path(CONF_DIR) / "model"


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


@functools.lru_cache(maxsize=None)
def _model_nodes() -> Dict[str, Dict[str, Any]]:
    """{NAME: the node of conf/model/NAME.yaml}, a `defaults: [OTHER, _self_]` list merged (OTHER first)."""
    from omegaconf import OmegaConf

    raw = {p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=False) for p in sorted(MODEL_DIR.glob("*.yaml"))}

    def merged(name: str, seen: tuple = ()) -> Dict[str, Any]:
        if name in seen:
            raise ValueError(f"conf/model/{name}.yaml: its defaults list includes itself")
        node = dict(raw[name])
        defaults = list(node.pop("defaults", None) or [])
        out: Dict[str, Any] = {}
        for item in defaults if "_self_" in defaults else [*defaults, "_self_"]:  # Hydra: _self_ last
            out.update(node if item == "_self_" else merged(str(item), seen + (name,)))
        return out

    return {name: merged(name) for name in raw}


def model_config(name: str) -> Dict[str, Any]:
    """A copy of the config node `model=NAME` selects (conf/model/NAME.yaml); ValueError naming the choices."""
    nodes = _model_nodes()
    if name not in nodes:
        raise ValueError(f"unknown model {name!r} (no codecx/conf/model/{name}.yaml); choose one of: "
                         f"{', '.join(nodes)}")
    return dict(nodes[name])


def backbone_class(name: str) -> type:
    """The class `model=NAME` builds (its YAML's `_target_`)."""
    from hydra._internal.utils import _locate

    return _locate(model_config(name)["_target_"])


class BackboneRegistry(Mapping):
    """{NAME: class} of every architecture in `codecx/conf/model/`: the files whose `name` is their
    own file name (a size preset such as mbt_mean_small, `name: mbt_mean`, is not another one).
    Adding a backbone = its module and its YAML; tests parametrized over this mapping pick it up."""

    def _names(self) -> List[str]:
        return [n for n, node in _model_nodes().items() if node.get("name", n) == n]

    def __getitem__(self, name: str) -> type:
        if name not in self._names():
            raise KeyError(name)
        return backbone_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


BACKBONES = BackboneRegistry()


def instantiate_backbone(node: Mapping[str, Any]) -> "Backbone":
    """The backbone of a `model` config node (`_target_` and its keyword arguments)."""
    from hydra.utils import instantiate

    return instantiate(dict(node), _convert_="all")


def build_backbone(name: str, N: Optional[int] = None, M: Optional[int] = None, weights: Optional[str] = None,
                   scale_levels: Optional[int] = None, **options: Any) -> "Backbone":
    """Backbone `model=NAME` from its YAML node, with `N`, `M`, `scale_levels` (None: the YAML's) and
    backbone `options` (e.g. hific's channels) overridden; `weights`: a state dict to load.
    The same node `python train.py model=NAME` instantiates."""
    node = model_config(name)
    sizes = {"N": N, "M": M, "scale_levels": scale_levels}
    node.update({k: v for k, v in sizes.items() if v is not None})
    known = set(node) | _parameters(node["_target_"])
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"model {name} has no option {', '.join(map(repr, unknown))}; its options: "
                         + ", ".join(sorted(k for k in known if not k.startswith("_"))))
    node.update(options, weights=weights)
    try:
        return instantiate_backbone(node)
    except Exception as e:  # noqa: BLE001 - Hydra wraps the constructor's error
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise cause from None
        raise


def _parameters(target: str) -> set:
    """Keyword parameters of the `_target_` class's constructor."""
    from hydra._internal.utils import _locate

    try:
        return {k for k in inspect.signature(_locate(target)).parameters if k != "self"}
    except (ValueError, TypeError, ImportError):
        return set()


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
    return Codec(instantiate_backbone(config["model"]), instantiate(dict(quantizer)), transforms=transforms,
                 refiners=instantiate_list(config.get("refine")), lmbda=config.get("lmbda"))
