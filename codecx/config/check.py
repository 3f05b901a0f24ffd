"""The pre-flight check: compose the config for the command line's overrides (each value of a
sweep), check group options, keys, value types and the entry point's own rules, and fail with
one line (exit 2) before anything is built, trained or written."""
from __future__ import annotations

import functools
import inspect
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from codecx.config.schema import register_configs

# a sweep's combinations are all checked up to this many; beyond it, each value on its own
MAX_SWEEP_COMBINATIONS = 64
# groups whose node is one `_target_` node, and multi-select groups ({name: _target_ node})
TARGET_GROUPS = ["model", "quantizer", "shift", "reg", "schedule", "data", "logger",
                 "transform", "refine", "distortion", "rate", "callbacks"]


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


def one_line(message: Any) -> str:
    """`message` on one line (Hydra's multi-line texts, option lists, causes joined)."""
    text = str(message).replace("\t", " ")
    return re.sub(r"\s*\n\s*", " ", text).strip()


def check_targets(cfg: DictConfig, groups: List[str]) -> None:
    """Every `_target_` node's keys must be parameters of its callable (lists the valid ones).
    A multi-select group (`transform=[a,b]`: {a: node, b: node}) checks each of its nodes."""
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        if "_target_" in node:
            _check_node(f"{group}", node)
            continue
        stray = []
        for name in map(str, node.keys()):
            sub = node.get(name)
            if isinstance(sub, DictConfig) and "_target_" in sub:
                _check_node(f"{group}.{name}", sub)
            elif not isinstance(sub, DictConfig):
                stray.append(f"{group}.{name}")
        if stray:  # e.g. +reg.foo=1 with reg=none, whose node builds nothing
            raise ConfigError(f"unknown key(s) {', '.join(stray)}: the chosen {group} option takes no "
                              "parameters (pick one that does, e.g. reg=cse)")


def _check_node(where: str, node: DictConfig) -> None:
    target = node["_target_"]
    try:
        fn = get_method(target) if not inspect.isclass(_safe(target)) else _safe(target)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{where}._target_={target}: cannot be imported ({one_line(e)})") from None
    valid = _signature_keys(fn)
    if valid is None:
        return
    unknown = [str(k) for k in node.keys() if not str(k).startswith("_") and k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)} for {target}; "
            f"valid keys: {', '.join(valid) or '(none)'}")
    _check_value_types(where, node, fn, target)


def _check_value_types(group: str, node: DictConfig, fn, target: str) -> None:
    """A number or bool parameter given a value that is not one (e.g. `reg.alpha=abc`): the
    untyped groups have no schema, so the callable's annotations and defaults tell the type."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    names = {"bool": bool, "int": int, "float": float}
    for key, p in params.items():
        if key not in node:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        ann = ann[len("Optional["):-1] if ann.startswith("Optional[") else ann  # None passes below
        kind = names.get(ann) or (type(p.default) if type(p.default) in (bool, int, float) else None)
        if kind is None:
            continue
        try:  # only this key: others may hold interpolations resolvable only at run time
            v = node[key]
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} before Hydra runs
            continue
        if v is None or _fits(v, kind):
            continue
        what = {bool: "a true/false value", int: "an integer", float: "a number"}[kind]
        raise ConfigError(f"wrong type for {group}.{key}: {v!r} is not {what} ({target} expects "
                          f"{what}" + ("" if p.default is p.empty else f", default {p.default!r}") + ")")


def _fits(v: Any, kind: type) -> bool:
    """Whether config value `v` is usable as `kind` (numbers given as text count)."""
    if kind is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return kind is float or float(v).is_integer()
    try:
        kind(v)
        return True
    except (TypeError, ValueError):
        return False


def _safe(target: str):
    from hydra._internal.utils import _locate

    return _locate(target)


# ------------------------------------------------------------------ combinations of methods
@dataclass
class Parts:
    """The methods a config combines, as the combination rules read them: each group's node
    (`_target_` and keys), the transforms and refiners as (name, node) in order, and the
    training crop. Built from a composed config (`parts_of_config`) or from option names
    (`parts_of_options`, the method matrix of tests/test_matrix.py)."""

    model: Dict[str, Any]
    quantizer: Dict[str, Any]
    transform: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    refine: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    reg: Dict[str, Any] = field(default_factory=dict)
    distortion: Dict[str, Any] = field(default_factory=dict)
    crop_size: Optional[int] = None

    def cls(self, node: Optional[Mapping[str, Any]]) -> Optional[type]:
        """The class a node's `_target_` names (None without one)."""
        target = (node or {}).get("_target_")
        return _located(target) if target else None

    def attr(self, node: Optional[Mapping[str, Any]], name: str, default: Any = None) -> Any:
        return getattr(self.cls(node), name, default)


@functools.lru_cache(maxsize=None)
def _located(target: str) -> Any:
    return _safe(target)


def _multi(node: Any) -> List[Tuple[str, Dict[str, Any]]]:
    """(name, node) of a multi-select group's node ({name: node}, or one `_target_` node)."""
    if not node:
        return []
    node = dict(node)
    if "_target_" in node:
        return [(str(node["_target_"]).rsplit(".", 1)[-1].lower(), node)]
    return [(str(k), dict(v)) for k, v in node.items() if v]


def parts_of_config(cfg: DictConfig) -> Parts:
    """The Parts of a composed train config."""
    def node(key: str) -> Any:
        v = cfg.get(key)
        return OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else (v or {})

    crop = OmegaConf.select(cfg, "data.crop_size")
    return Parts(model=node("model"), quantizer=node("quantizer"), transform=_multi(node("transform")),
                 refine=_multi(node("refine")), reg=node("reg"), distortion=node("distortion"),
                 crop_size=crop if isinstance(crop, int) else None)


def parts_of_options(options: Mapping[str, str], cache: Optional[Dict] = None,
                     crop_size: Optional[int] = None) -> Parts:
    """The Parts of option names ({"model": "mbt", "quantizer": "hex", "transform": "lpc,latent_mse",
    ...}; "none" or absent: the optional group left empty), from the option files of CONF_DIR (their
    nodes unresolved: the rules read no interpolated key)."""
    from codecx.conf import CONF_DIR
    from codecx.models.build import model_config

    cache = {} if cache is None else cache

    def load(group: str, name: Optional[str]) -> Dict[str, Any]:
        if not name or name == "none":
            return {}
        if (group, name) not in cache:
            f = Path(CONF_DIR) / group / f"{name}.yaml"
            cache[group, name] = model_config(name) if group == "model" else \
                OmegaConf.to_container(OmegaConf.load(f), resolve=False) or {}
        return cache[group, name]

    def many(group: str) -> List[Tuple[str, Dict[str, Any]]]:  # "lpc,latent_mse": in order
        return [item for name in str(options.get(group) or "none").split(",") for item in _multi(load(group, name))]

    return Parts(model=load("model", options.get("model")), quantizer=load("quantizer", options.get("quantizer")),
                 transform=many("transform"), refine=many("refine"), reg=load("reg", options.get("reg")),
                 distortion=load("distortion", options.get("distortion")), crop_size=crop_size)


def _lattice_on_factorized(p: Parts) -> Optional[str]:
    """Lattice quantizers integrate a Gaussian over their cells (paper 001); the factorized prior has none."""
    if p.attr(p.quantizer, "needs_gaussian_prior", False) and p.attr(p.model, "family") == "factorized":
        return (f"quantizer={p.quantizer.get('lattice', p.quantizer.get('_target_'))}: lattice quantizers need a "
                f"Gaussian (mean-)scale prior for their cell probabilities; model={p.model.get('name')} (the "
                "factorized prior) has none: use quantizer=noise/ste/mixed, or a hyperprior or context backbone")
    return None


def _scalar_refiner_on_a_lattice(p: Parts) -> Optional[str]:
    """SGA anneals scalar rounding (arXiv 2006.04240); a lattice quantizer codes vectors."""
    if p.attr(p.quantizer, "scalar", True):
        return None
    for name, node in p.refine:
        if p.attr(node, "scalar_only", False):
            return (f"refine={name} relaxes scalar rounding; quantizer={p.quantizer.get('lattice', '?')} codes "
                    f"vectors on a lattice: use quantizer=noise/ste/mixed with refine={name}, or drop the refiner")
    return None


def _predicted_compensation_on_factorized(p: Parts) -> Optional[str]:
    """LPC's predicted parameters read the prior's scales (Rethinking Latent Variable, WACV 2026); the
    factorized prior has none."""
    for name, node in p.transform:
        if node.get("params") == "predicted" and p.attr(p.model, "family") == "factorized":
            return (f"transform.{name}.params=predicted reads the prior's scales; model={p.model.get('name')} (the "
                    "factorized prior) has none: use params=learned, or a hyperprior or context backbone")
    return None


def _latent_mse_trains_nothing(p: Parts) -> Optional[str]:
    """The latent-MSE term `w * mean((y - y_hat')^2)` (Rethinking Latent Variable, WACV 2026) trains
    only a learned compensation before it (`LatentTransform.learned`: LRP, LPC): `y - y_hat` is a
    constant of the parameters under every training quantizer (codecx.transforms.latent_mse). A
    weighted term with none before it (transform=latent_mse alone, fpc.latent_mse, [latent_mse,lrp]) adds a constant."""
    learned = False
    for name, node in p.transform:
        t = _built(node)
        if t is None:  # a bad transform option: building the model reports it
            return None
        learned = learned or (bool(getattr(t, "learned", True)) and bool(getattr(t, "in_training", True)))
        weight = float(getattr(t, "latent_mse", 0.0) or 0.0)
        if weight > 0 and not learned:
            return (f"transform.{name}: its latent-MSE term trains nothing: y - y_hat is a constant of the "
                    "parameters under every training quantizer, so the term (Rethinking Latent Variable, WACV "
                    "2026) trains only a learned "
                    "compensation before it (lrp, lpc); use e.g. transform.lrp.latent_mse=1 or "
                    "'transform=[lpc,latent_mse]', or drop the term")
    return None


_BUILT: Dict[str, Any] = {}


def _built(node: Mapping[str, Any]) -> Any:
    """The object of a (small) `_target_` node, built once per distinct node; None if it cannot be."""
    key = repr(sorted((str(k), repr(v)) for k, v in node.items()))
    if key not in _BUILT:
        from hydra.utils import instantiate

        try:
            _BUILT[key] = instantiate(dict(node))
        except Exception:  # noqa: BLE001
            _BUILT[key] = None
    return _BUILT[key]


def _crop_too_small_for_the_distortion(p: Parts) -> Optional[str]:
    """MS-SSIM's 5 scales of an 11-px window need >= 161 px per side (`Distortion.min_size`)."""
    need = int(p.attr(p.distortion, "min_size", 0) or 0)
    if p.crop_size is not None and p.crop_size < need:
        name = str(p.distortion.get("_target_", "")).rsplit(".", 1)[-1]
        return (f"data.crop_size={p.crop_size}: the distortion {name} needs training crops of at least {need} px "
                f"per side; set data.crop_size={need} or more (e.g. 256), or use distortion=mse")
    return None


#: the combinations of methods that cannot work, one rule each (the one place of these rules): the
#: pre-flight check refuses a config one of them fires on, in its one line; the method matrix
#: (tests/test_matrix.py) tests every other combination pairwise and asserts each refusal
COMBINATION_RULES: List[Callable[[Parts], Optional[str]]] = [
    _lattice_on_factorized, _scalar_refiner_on_a_lattice, _predicted_compensation_on_factorized,
    _latent_mse_trains_nothing, _crop_too_small_for_the_distortion]


def combination_problem(parts: Parts) -> Optional[str]:
    """Why these methods cannot work together (the first rule of COMBINATION_RULES that fires), or None."""
    for rule in COMBINATION_RULES:
        why = rule(parts)
        if why:
            return why
    return None


def check_combination(cfg: DictConfig) -> None:
    """ConfigError (one line, why and the way out) when the config combines methods that cannot work."""
    why = combination_problem(parts_of_config(cfg))
    if why:
        raise ConfigError(why)


def check_latent_mse(cfg: DictConfig) -> None:
    """The latent-MSE rule alone (`_latent_mse_trains_nothing`)."""
    why = _latent_mse_trains_nothing(parts_of_config(cfg))
    if why:
        raise ConfigError(why)


STORED_KEYS = ("lmbda", "seed", "model", "quantizer", "reg", "schedule", "data",
               "transform", "refine", "distortion", "rate")


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved parts of the config that define the model (stored in checkpoints)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
            else cfg[k] for k in STORED_KEYS if k in cfg}


def _signature_keys(fn) -> Optional[List[str]]:
    """Parameter names a callable accepts, or None when it takes **kwargs."""
    init = getattr(fn, "__init__", None) if inspect.isclass(fn) else None
    if init is not None and init is torch_module_init():
        return []
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n in sig.parameters if n != "self"]


def torch_module_init():
    import torch

    return torch.nn.Module.__init__


def _equals_hint(overrides: Sequence[str]) -> str:
    """The likely cause of a parse error: an unquoted value containing '=' (a path such as
    runs/zoo/lmbda=0.0067/...), which Hydra's grammar reads as a second assignment."""
    for o in overrides:
        key, _, value = o.partition("=")
        if "=" in value and value[:1] not in "'\"[":
            return (f". The value of {key} contains '=': quote it for Hydra, e.g. {key}=\"'{value}'\" "
                    f"or {key}=\"['{value}']\"")
    return ""


def sweep_trials(overrides: Sequence[str]) -> List[List[str]]:
    """The override lists a sweep runs: every combination of the sweep values when there are at
    most MAX_SWEEP_COMBINATIONS of them, else the fixed overrides with each value on its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # noqa: BLE001 - hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides: {one_line(e)}{_equals_hint(overrides)}") from None
    fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    sweeps = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
              for o in parsed if o.is_sweep_override()]
    if not sweeps:
        return [fixed]
    n = 1
    for values in sweeps:
        n *= max(1, len(values))
    if n <= MAX_SWEEP_COMBINATIONS:
        return [fixed + list(combo) for combo in itertools.product(*sweeps)]
    return [fixed] + [fixed + [v] for values in sweeps for v in values]


def precheck(overrides: List[str], config_dir: str, config_name: str = "train",
             validate: Optional[Callable[[DictConfig], None]] = None) -> None:
    """Compose the config for `overrides` (every sweep combination in turn) and raise
    ConfigError with the valid choices / keys when a group option, key or value is wrong;
    `validate(cfg)` adds the entry point's own checks (its ValueErrors become ConfigErrors)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    trials = sweep_trials(user)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            for trial in trials:
                try:
                    cfg = compose(config_name, overrides=trial)
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(_explain(e, config_name, trial)) from None
                where = f" (sweep job {' '.join(trial)})" if len(trials) > 1 else ""
                try:
                    check_targets(cfg, TARGET_GROUPS)
                    check_combination(cfg)
                    if validate is not None:
                        validate(cfg)
                except ConfigError as e:
                    raise ConfigError(f"{one_line(e)}{where}") from None
                except (ValueError, TypeError, OSError) as e:
                    raise ConfigError(f"{one_line(e)}{where}") from None
    finally:
        GlobalHydra.instance().clear()


def hydra_run_dir(overrides: List[str], config_dir: str, config_name: str = "train") -> Optional[str]:
    """The `hydra.run.dir` a single run of `overrides` writes to (None if it cannot be told)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return str(cfg.hydra.run.dir)
    except Exception:  # noqa: BLE001 - the run itself will report it
        return None
    finally:
        GlobalHydra.instance().clear()


def group_option(group: str, name: str, config_dir: str, config_name: str = "eval") -> Dict[str, Any]:
    """The resolved `_target_` node of one config group option (e.g. quantizer=hex) as a dict;
    ConfigError listing the available options when `name` is not one of them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=[f"{group}={name}"])
            except Exception as e:  # noqa: BLE001
                raise ConfigError(_explain(e, config_name)) from None
            check_targets(cfg, [group])
    finally:
        GlobalHydra.instance().clear()
    node = OmegaConf.to_container(cfg[group], resolve=True)
    return {str(k): v for k, v in node.items()} if isinstance(node, dict) else {}


def group_options(group: str, config_dir: str) -> List[str]:
    """The option names of a config group (the YAML files of `config_dir/group`)."""
    d = os.path.join(config_dir, group)
    if not os.path.isdir(d):
        return []
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


def drop_null_groups(args: Sequence[str], config_dir) -> List[str]:
    """`GROUP=null` -> Hydra's `~GROUP` (drop the group's default, e.g. experiment=null: no
    main-job recipe): Hydra fails on GROUP=null when the dropped option overrides other groups."""
    groups = None
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and value == "null" and not key.startswith(("-", "+", "~")):
            if groups is None:
                groups = {p.name for p in Path(config_dir).iterdir() if p.is_dir()}
            if key in groups:
                a = f"~{key}"
        out.append(a)
    return out


def main_with_precheck(hydra_main, config_dir: str, config_name: str, prog: str,
                       validate: Optional[Callable[[DictConfig], None]] = None,
                       before: Optional[Callable[[List[str]], None]] = None) -> None:
    """Run a `@hydra.main` function after `precheck` of the command line's overrides: a
    configuration error prints one line and exits 2 (HYDRA_FULL_ERROR=1: the traceback);
    `before(overrides)` runs next (e.g. the run-directory lock check) with the same handling."""
    import sys

    sys.argv[1:] = drop_null_groups(sys.argv[1:], config_dir)
    args = sys.argv[1:]
    if not any(a.startswith("--") and a not in ("--multirun",) for a in args):
        overrides = [a for a in args if not a.startswith("-")]
        try:
            precheck(overrides, config_dir, config_name, validate)
            if before is not None:
                before(overrides)
        except ConfigError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{prog}: configuration error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
    hydra_main()


def _explain(e: Exception, config_name: str, overrides: Sequence[str] = ()) -> str:
    """One line for a Hydra composition error, from the structured exceptions (the missing
    option and its group's options; the offending key and the keys valid at its place, in the
    config the other `overrides` select; the value and the type it should have)."""
    from hydra import compose
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(e, MissingConfigException):
        missing = e.missing_cfg_file or ""
        group = missing.rsplit("/", 1)[0] if "/" in missing else ""
        opts = list(e.options or [])
        first = one_line(str(e).split("\n\n")[0].split("Available options")[0])
        if opts:
            return f"{first}; Available options in '{group}': {', '.join(opts)}"
        return first
    cause = e.__cause__ if e.__cause__ is not None else e
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        others = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
        try:
            base = compose(config_name, overrides=others)
        except Exception:  # noqa: BLE001 - another override is wrong too: the defaults
            base = compose(config_name)
        node = OmegaConf.select(base, parent) if parent else base
        valid = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "?"
        return (f"unknown key {key!r}; valid keys of {parent or 'the root'}: {valid} "
                f"(use +{key}=VALUE only to add a key on purpose)")
    if isinstance(cause, ValidationError) and key:
        value = getattr(cause, "value", None)
        msg = (str(getattr(cause, "msg", "") or cause).strip().splitlines() or [""])[0]
        return f"wrong type for {key}: {value!r} ({msg})"
    text = str(e) + ("\n" + str(e.__cause__) if e.__cause__ else "")
    return one_line(text.split("\nConfig search path")[0])
