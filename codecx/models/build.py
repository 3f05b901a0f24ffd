"""The backbone registry (one entry per `codecx/conf/model/NAME.yaml`), building a backbone by
name, and loading CompressAI / codecx / NeuralCompression state dicts into one."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple


from codecx.conf import CONF_DIR
from codecx.models.weights import load_weights, non_finite_tensors  # noqa: F401 - their former home

if TYPE_CHECKING:
    from codecx.models.backbones import Backbone

#: the model group's folder: each NAME.yaml is a backbone config (`_target_`: its class)
MODEL_DIR = Path(CONF_DIR) / "model"


#: the quantizer of a config without one (a bare CompressAI state dict): every scalar one codes alike;
#: keyed as the quantizer configs are (`scale_keys: nearest`), so `quantizer=hex` beside it compares
#: quantizers only (CompressAI's own bitstreams: `quantizer=noise quantizer.scale_keys=up`)
DEFAULT_QUANTIZER = {"_target_": "codecx.quantizers.NoiseQuantizer", "scale_keys": "nearest"}


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


def transform_items(config: Mapping[str, Any]) -> List[Tuple[Optional[str], Dict[str, Any]]]:
    """(name, node) of each latent transform of a config, in the codec's order: those of the
    multi-select `transform` (name None for a single `_target_` node), then a pre-issue-30
    config's `shift` node (name "shift": the latent shift is a transform now)."""
    items: List[Tuple[Optional[str], Dict[str, Any]]] = []
    for key in ("transform", "shift"):
        node = dict(config.get(key) or {})
        if "_target_" in node:
            items.append((None if key == "transform" else key, node))
        else:
            items += [(str(k), dict(v)) for k, v in node.items() if v]
    return items


def build_codec(config: Mapping[str, Any]):
    """The Codec of a resolved config (train.py's or a checkpoint's `codecx_config`): `model`,
    `quantizer`, `transform` (latent transforms, in order: trained ones and eval-time ones such
    as the latent shift; `transform_items`), `refine` (encoder refiners), `lmbda` and
    `distortion` (the configured distortion's node, built when first used: what refiners and
    eval-time transforms judge reconstructions with)."""
    from hydra.utils import instantiate

    from codecx.models.codec import Codec

    quantizer = config.get("quantizer") or DEFAULT_QUANTIZER
    transforms = [instantiate(node) for _, node in transform_items(config)]
    return Codec(instantiate_backbone(config["model"]), instantiate(dict(quantizer)), transforms=transforms,
                 refiners=instantiate_list(config.get("refine")), lmbda=config.get("lmbda"),
                 distortion=config.get("distortion") or None)
