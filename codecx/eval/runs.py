"""The runs of a Hydra multirun: found by their .hydra folders, their configurations read (or the
checkpoint's), and grouped by the settings that differ between them (except `lmbda` and `seed`),
with the baseline group found by KEY=VALUE."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from codecx.eval.checkpoint import checkpoint_info
from codecx.eval.results import data_key

GROUP_EXCLUDE = {"lmbda", "seed"}
# settings that do not change what a run trains or how it is evaluated: never split groups
NOT_GROUPED = ("hydra", "resume", "sweep_report", "logger", "callbacks", "checkpoint", "eval",
               "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
               "data.num_workers", "data.pin_memory")


@dataclass
class Run:
    """One job of a multirun: its folder, command-line overrides, Hydra group choices, and the
    configuration it used (flattened, resolved; `raw`: the unresolved leaves, e.g. '${alpha}')."""

    dir: Path
    overrides: Dict[str, str]
    choices: Dict[str, str] = field(default_factory=dict)
    results: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict)
    step: int = -1        # last.ckpt's global step (-1: unknown)
    max_steps: int = -1   # trainer.max_steps it was run with (-1: unknown or unlimited)
    per_image: List[Dict[str, str]] = field(default_factory=list)  # its per_image.csv rows

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    @property
    def incomplete(self) -> bool:
        """last.ckpt (or the final evaluation) stopped before trainer.max_steps: a killed run."""
        return self.max_steps > 0 and 0 <= self.step < self.max_steps

    def value(self, key: str, default: str = "?") -> str:
        """A setting as text: the override as written, else the used config's value."""
        if key in self.overrides:
            return self.overrides[key]
        if self.config is not None and key in self.config:
            return _text(self.config[key])
        return self.choices.get(key, default)


def _text(v: Any) -> str:
    return "null" if v is None else str(v)


def _parse_overrides(lines: Sequence[str]) -> Dict[str, str]:
    """{'quantizer': 'ste', 'lmbda': '0.0018', ...} from Hydra's overrides.yaml (hydra.* dropped)."""
    out = {}
    for line in map(str, lines):
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra."):
            out[key] = value
    return out


def _flatten(node: Any, prefix: str, out: Dict[str, Any], raw: Dict[str, Any]) -> None:
    """Leaves of an OmegaConf node by dotted key: resolved where possible (a leaf that needs a
    Hydra-only resolver keeps its text), the unresolved text in `raw`."""
    from omegaconf import DictConfig, ListConfig

    for k in node.keys():
        key = f"{prefix}{k}"
        child = node._get_node(k)
        raw_value = child._value() if child is not None else None
        try:
            v = node[k]
        except Exception:  # noqa: BLE001 - ${hydra:...} outside Hydra
            out[key], raw[key] = str(raw_value), str(raw_value)
            continue
        if isinstance(v, DictConfig):
            if len(v) == 0:
                out[key] = raw[key] = "{}"
            _flatten(v, f"{key}.", out, raw)
        elif isinstance(v, ListConfig):
            try:
                out[key] = str(OmegaConf.to_container(v, resolve=True))
            except Exception:  # noqa: BLE001
                out[key] = str(OmegaConf.to_container(v, resolve=False))
            raw[key] = out[key]
        else:
            out[key], raw[key] = v, raw_value


def load_run_config(run: Run) -> None:
    """Fill `run.config` / `run.raw` from .hydra/config.yaml (else the checkpoint's
    codecx_config), and `run.step` / `run.max_steps`."""
    from codecx.config.schema import register_configs

    register_configs()  # codecx's resolvers
    step, ckpt_config = checkpoint_info(run.ckpt)
    f = run.dir / ".hydra" / "config.yaml"
    flat: Dict[str, Any] = {}
    raw: Dict[str, Any] = {}
    if f.is_file():
        _flatten(OmegaConf.load(f), "", flat, raw)
    elif isinstance(ckpt_config, dict):
        _flatten(OmegaConf.create(ckpt_config), "", flat, raw)
    run.config, run.raw = (flat or None), raw
    results_step = (run.results or {}).get("step") if isinstance(run.results, dict) else None
    run.step = step if step >= 0 else (int(results_step) if isinstance(results_step, int) else -1)
    ms = flat.get("trainer.max_steps", run.overrides.get("trainer.max_steps"))
    try:
        run.max_steps = int(ms) if ms is not None else -1
    except (TypeError, ValueError):
        run.max_steps = -1


def _overrides_files(root: Path) -> List[Path]:
    """Every .hydra/overrides.yaml under `root`, symlinked folders followed (a sweep assembled
    from links to runs elsewhere), each real folder visited once (no symlink loops)."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if os.path.basename(dirpath) == ".hydra" and "overrides.yaml" in filenames:
            found.append(Path(dirpath) / "overrides.yaml")
    return sorted(found)


def find_runs(root: Path) -> List[Run]:
    """Every run folder under `root` (one with .hydra/overrides.yaml; symlinked run folders
    included), sorted by path."""
    runs = []
    for f in _overrides_files(Path(root)):
        run_dir = f.parent.parent
        hydra_yaml = f.parent / "hydra.yaml"
        choices = {}
        if hydra_yaml.is_file():
            choices = OmegaConf.to_container(OmegaConf.load(hydra_yaml)).get("hydra", {}) \
                .get("runtime", {}).get("choices", {}) or {}
        overrides = _parse_overrides(OmegaConf.to_container(OmegaConf.load(f)) or [])
        runs.append(Run(run_dir, overrides, {k: str(v) for k, v in choices.items()}))
    return runs


def _knobs() -> set:
    """Top-level settings that codecx/conf interpolates into groups (`alpha` -> reg.cse.alpha):
    a run's effective value is where it is used, so the top-level copy never groups."""
    import re

    from codecx.conf import CONF_DIR

    names = set()
    for p in Path(CONF_DIR).rglob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Za-z_]\w*)\}", p.read_text(errors="ignore")))
    return names


def _grouped_keys(runs: Sequence[Run], exclude: Sequence[str]) -> List[str]:
    """Settings of the used configurations that differ between runs (lmbda, seed, `exclude`,
    bookkeeping and interpolated top-level knobs left out)."""
    import re

    skip = GROUP_EXCLUDE | set(exclude)
    knobs = _knobs() | {m for r in runs for v in r.raw.values() if isinstance(v, str)
                        for m in re.findall(r"\$\{([A-Za-z_]\w*)\}", v)}
    keys = sorted({k for r in runs for k in r.config})
    out = []
    for k in keys:
        if k in skip or (k in knobs and "." not in k) or any(k == p or k.startswith(p + ".") for p in NOT_GROUPED):
            continue
        if any(isinstance(r.raw.get(k), str) and any("${" + x + "}" in r.raw[k] for x in skip) for r in runs):
            continue  # follows lmbda or seed (data.seed, a base checkpoint per lambda): not a group key
        if len({_text(r.config.get(k, "<absent>")) for r in runs}) > 1:
            out.append(k)
    return out


def _label_tokens(runs: Sequence[Run], keys: Sequence[str]) -> Dict[str, str]:
    """For each differing key, how a run's value is named in its group label: `reg=cse` when
    the group choice alone explains it, `alpha=1` when it is an interpolated knob, else key=value."""
    import re

    out = {}
    for k in keys:
        top = k.split(".", 1)[0]
        choices = {r.choices.get(top) for r in runs}
        if None not in choices and len(choices) > 1 and all(
                len({_text(r.config.get(k, "<absent>")) for r in runs if r.choices.get(top) == c}) == 1
                for c in choices):
            out[k] = f"choice:{top}"
            continue
        knob = {m.group(1) for r in runs if isinstance(r.raw.get(k), str)  # ${alpha}, ${codecx_or:${alpha},0.0}
                for m in [re.fullmatch(r"\$\{(?:codecx_or:\$\{)?([A-Za-z_]\w*)\}(?:,[^{}]*\})?", r.raw[k])] if m}
        out[k] = f"knob:{knob.pop()}" if len(knob) == 1 else f"key:{k}"
    return out


def _written(r: Run, key: str) -> str:
    """`key`'s setting in a run's label as the user wrote it: the override of `key` itself, else
    the override of its nearest enclosing group (`transform=lpc` for `transform.lpc.hidden`), else
    key=value from the used configuration."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        k = ".".join(parts[:i])
        if k in r.overrides:
            return f"{k}={r.overrides[k]}"
    return f"{key}={_text(r.config[key])}"


def group_runs(runs: Sequence[Run], exclude: Sequence[str] = ()) -> Dict[str, List[Run]]:
    """Runs grouped by the configuration each one used (`Run.config`: .hydra/config.yaml or the
    checkpoint's): the settings that differ between runs, except lmbda, seed and `exclude`;
    labelled `group=choice` / `knob=value` / `key=value`. Runs without a known configuration
    (results.json only) are grouped by their overrides as written, except lmbda (and `exclude`)."""
    if runs and all(r.config for r in runs):
        keys = _grouped_keys(runs, exclude)
        how = _label_tokens(runs, keys)
        groups: Dict[str, List[Run]] = {}
        written: Dict[str, set] = {}  # group -> its runs' labels from the overrides as written
        for r in runs:
            tokens: List[str] = []
            short: List[str] = []
            for k in keys:
                if k not in r.config:
                    continue  # e.g. reg.cse.alpha of a reg=none run
                kind, _, name = how[k].partition(":")
                tok = (f"{name}={r.choices[name]}" if kind == "choice" else
                       f"{name}={_text(r.config[k])}" if kind == "knob" else f"{k}={_text(r.config[k])}")
                for t, ts in ((tok, tokens), (_written(r, k) if kind == "key" else tok, short)):
                    if t not in ts:
                        ts.append(t)
            label = ",".join(tokens) or "all"
            groups.setdefault(label, []).append(r)
            written.setdefault(label, set()).add(",".join(short) or "all")
        # name each group by its overrides as written (transform=lpc,transform.lpc.params=predicted
        # rather than every transform.lpc.* value) where that names every group alike and apart
        names = {g: next(iter(w)) for g, w in written.items() if len(w) == 1}
        if len(names) == len(groups) and len(set(names.values())) == len(names):
            return {names[g]: rs for g, rs in groups.items()}
        return groups
    keys = sorted({k for r in runs for k in r.overrides} - {"lmbda"} - set(exclude))
    varying = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    groups = {}
    for r in runs:
        label = ",".join(f"{k}={r.overrides[k]}" for k in varying if k in r.overrides) or "all"
        groups.setdefault(label, []).append(r)
    return groups


def parse_baseline(spec: str) -> Dict[str, str]:
    """'reg=none' or 'reg=none,quantizer=noise' -> {key: value}."""
    pairs = [p for p in spec.split(",") if p]
    if not pairs or any("=" not in p for p in pairs):
        raise ValueError(f"--baseline {spec!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. reg=none")
    return dict(p.split("=", 1) for p in pairs)


def find_baseline(groups: Dict[str, List[Run]], spec: str) -> str:
    """The label of the one group that has the baseline's KEY=VALUE pairs: in its label, or in
    every run's overrides, group choices or used configuration."""
    want = parse_baseline(spec)

    def has(label: str, runs: List[Run], k: str, v: str) -> bool:
        if f"{k}={v}" in label.split(","):
            return True
        return all(_same(r.overrides.get(k, r.choices.get(k, r.value(k, "<absent>"))), v) for r in runs)

    match = [g for g, runs in groups.items() if all(has(g, runs, k, v) for k, v in want.items())]
    if len(match) != 1:
        raise ValueError(f"--baseline {spec}: {'no' if not match else len(match)} groups match "
                         f"(exactly one must); groups: {'; '.join(groups)}")
    return match[0]


def _same(a: Any, b: Any) -> bool:
    """Config values equal as text or as numbers ('1' and 1.0)."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def own_data_key(run: Run) -> Optional[Dict[str, Any]]:
    """The data key of a run's own validation images (its .hydra/config.yaml), None if unknown."""
    f = run.dir / ".hydra" / "config.yaml"
    if not f.is_file():
        return None
    data = OmegaConf.to_container(OmegaConf.load(f)).get("data")
    return data_key(data) if isinstance(data, dict) else None
