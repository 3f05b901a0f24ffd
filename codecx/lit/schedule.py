"""Optimizers, learning-rate schedules and training stages (`schedule=compressai`, `schedule=cosine`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch.optim import Optimizer

SCHEDULERS = ("plateau", "multistep", "cosine", "quarter_cosine", "constant")
#: the per-step schedules an auxiliary phase (or `codecx train-labeler`) may use
STEP_SCHEDULERS = ("constant", "cosine", "quarter_cosine", "multistep")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: what `schedule.phases.<name>` may set for an auxiliary phase's optimizer
PHASE_KEYS = ("optimizer", "lr", "betas", "weight_decay", "scheduler", "milestones", "gamma",
              "warmup_steps", "min_lr", "clip_max_norm")


def make_optimizer(name: str, params: Iterable, lr: float, betas: Sequence[float] = (0.9, 0.999),
                   weight_decay: float = 0.0, where: str = "schedule.optimizer") -> Optimizer:
    """Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019) by name."""
    if name not in OPTIMIZERS:
        raise ValueError(f"{where}={name!r}: choose one of {list(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=float(lr), betas=tuple(float(b) for b in betas),
                            weight_decay=float(weight_decay))


def step_scheduler(opt: Optimizer, scheduler: str, max_steps: int, milestones: Sequence[int] = (),
                   gamma: float = 0.1, warmup_steps: int = 0, min_lr: float = 0.0) -> Optional[dict]:
    """A per-step schedule (Lightning scheduler dict) or None for "constant".

    "cosine": linear warm-up over `warmup_steps` (factor `(t+1)/warmup`), then a half cosine
    to `min_lr` at `max_steps`. "quarter_cosine": MS-ILLM's released `RampCosineLRSchedule`
    (arXiv:2306.01129, NeuralCompression `projects/illm`): a ramp `t/warmup` from 0, then
    `cos((t - warmup) / max_steps * pi/2)` (a quarter cosine that ends at `cos(pi/2 (1 -
    warmup/max_steps))`, 0.0157 of the peak for 10k of 1M steps, not at 0), both floored at
    1e-12 as released; `min_lr` lifts the floor (`min_lr + (lr - min_lr) * factor`).
    "multistep": x`gamma` at each of `milestones`. `t` counts optimizer steps.
    """
    if scheduler == "multistep":
        return {"scheduler": torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma),
                "interval": "step"}
    if scheduler == "cosine":
        total = max(int(max_steps), 1)
        warm = int(warmup_steps)
        base = opt.param_groups[0]["lr"]
        floor = min_lr / base if base else 0.0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}
    if scheduler == "quarter_cosine":
        total, warm = max(int(max_steps), 1), int(warmup_steps)
        base = opt.param_groups[0]["lr"]
        floor = min_lr / base if base else 0.0

        def quarter(step: int) -> float:
            if step < warm:
                f = max(min(step / warm, 1.0), 1e-12)
            else:
                f = max(math.cos((step - warm) / total * math.pi / 2), 1e-12)
            return floor + (1 - floor) * f

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, quarter), "interval": "step"}
    return None


class Schedule:
    """The codec optimizer, auxiliary optimizers, the learning-rate schedules and the stages.

    `compressai`: Adam 1e-4 (aux 1e-3), ReduceLROnPlateau on `val/loss` or step decay at
    `milestones` (CompressAI's example trainer). `cosine`: linear warm-up over
    `warmup_steps`, then cosine decay to `min_lr` at the run's last step; with
    `scheduler=quarter_cosine` MS-ILLM's released shape (`step_scheduler`).

    `stages`: a list of `{steps: N, trainable: [group, ...]}` run in order (the last one's
    `steps` may be null: until the end). Groups are the codec's (`g_a`, `h_a`, `h_s`,
    `entropy`, `context`, `g_s`, `transforms`) and each auxiliary phase's name (`aux` is the
    quantile fit, which runs while `entropy` trains). Without stages everything trains.
    `phases`: per auxiliary phase name, optimizer settings that replace the phase's defaults
    (`optimizer`, `lr`, `betas`, `weight_decay`, `clip_max_norm`: the phase's gradient-norm
    clip, null or 0 = none; and a per-step `scheduler`: constant | cosine | quarter_cosine |
    multistep with `milestones`, `gamma`, `warmup_steps`, `min_lr`).
    `group_lr`: per codec parameter group, a learning rate that replaces `lr` for that group
    (e.g. `{transforms: 1e-3}`: a module new to a fine-tuned codec learns faster than the
    codec moves; None: `lr`); the codec's schedule scales every group by the same factor.
    """

    def __init__(self, name: str = "compressai", optimizer: str = "adam", lr: float = 1e-4,
                 aux_lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 weight_decay: float = 0.0, clip_max_norm: Optional[float] = 1.0,
                 scheduler: str = "plateau", plateau_factor: float = 0.5,
                 plateau_patience: int = 10, milestones: Sequence[int] = (), gamma: float = 0.1,
                 warmup_steps: int = 0, min_lr: float = 0.0,
                 stages: Optional[Sequence[Mapping[str, Any]]] = None,
                 phases: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 group_lr: Optional[Mapping[str, float]] = None):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"schedule.optimizer={optimizer!r}: choose one of {list(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"schedule.scheduler={scheduler!r}: choose one of {list(SCHEDULERS)}")
        for key, v in (("lr", lr), ("aux_lr", aux_lr)):
            if not v > 0:
                raise ValueError(f"schedule.{key}={v}: must be a positive learning rate")
        self.name, self.optimizer, self.lr, self.aux_lr = name, optimizer, float(lr), float(aux_lr)
        self.betas, self.weight_decay = tuple(float(b) for b in betas), float(weight_decay)
        self.clip_max_norm = None if clip_max_norm in (None, 0) else float(clip_max_norm)
        self.scheduler, self.plateau_factor = scheduler, float(plateau_factor)
        self.plateau_patience, self.milestones = int(plateau_patience), list(milestones)
        self.gamma, self.warmup_steps, self.min_lr = float(gamma), int(warmup_steps), float(min_lr)
        self.stages = self._check_stages(stages)
        self.group_lr = {str(k): float(v) for k, v in (group_lr or {}).items() if v is not None}
        for key, v in self.group_lr.items():
            if not v > 0:
                raise ValueError(f"schedule.group_lr.{key}={v}: must be a positive learning rate")
        self.phases = {str(k): dict(v or {}) for k, v in (phases or {}).items()}
        for phase, spec in self.phases.items():
            unknown = sorted(set(spec) - set(PHASE_KEYS))
            if unknown:
                raise ValueError(f"schedule.phases.{phase}: unknown key(s) {unknown}; valid: {list(PHASE_KEYS)}")
            if spec.get("scheduler", "constant") not in STEP_SCHEDULERS:
                raise ValueError(f"schedule.phases.{phase}.scheduler={spec['scheduler']!r}: "
                                 f"choose one of {', '.join(STEP_SCHEDULERS)}")
            clip = spec.get("clip_max_norm")
            if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                     or not clip >= 0):
                raise ValueError(f"schedule.phases.{phase}.clip_max_norm={clip}: a gradient norm "
                                 "> 0 (null or 0: no clipping)")

    @staticmethod
    def _check_stages(stages) -> List[Dict[str, Any]]:
        out = []
        for i, st in enumerate(stages or []):
            st = dict(st)
            unknown = sorted(set(st) - {"steps", "trainable", "name"})
            if unknown:
                raise ValueError(f"schedule.stages[{i}]: unknown key(s) {unknown}; valid: steps, trainable, name")
            steps = st.get("steps")
            if steps is None and i != len(stages) - 1:
                raise ValueError(f"schedule.stages[{i}].steps is null: only the last stage may run to the end")
            if steps is not None and int(steps) <= 0:
                raise ValueError(f"schedule.stages[{i}].steps={steps}: must be a positive number of steps")
            trainable = st.get("trainable")
            if not trainable or isinstance(trainable, str):
                raise ValueError(f"schedule.stages[{i}].trainable: a non-empty list of parameter groups "
                                 "(g_a, h_a, h_s, entropy, context, g_s, transforms, or a phase name)")
            out.append({"name": st.get("name", f"stage{i}"), "steps": None if steps is None else int(steps),
                        "trainable": [str(t) for t in trainable]})
        return out

    def stage_at(self, step: int) -> Optional[Dict[str, Any]]:
        """The stage that codec step `step` (0-based) belongs to (None: no stages)."""
        if not self.stages:
            return None
        end = 0
        for st in self.stages:
            if st["steps"] is None:
                return st
            end += st["steps"]
            if step < end:
                return st
        return self.stages[-1]

    def codec_optimizer(self, params: Iterable,
                        groups: Optional[Mapping[str, Sequence[torch.nn.Parameter]]] = None) -> Optimizer:
        """The codec's optimizer over `params`; those in a `groups[name]` with a `group_lr[name]`
        form their own parameter group at that learning rate."""
        params = list(params)
        if not self.group_lr:
            return make_optimizer(self.optimizer, params, self.lr, self.betas, self.weight_decay)
        groups = groups or {}
        unknown = sorted(set(self.group_lr) - set(groups))
        if unknown:
            raise ValueError(f"schedule.group_lr: unknown parameter group(s) {unknown}; valid: {sorted(groups)}")
        keep = {id(p) for p in params}
        special, taken = [], set()
        for name, lr in self.group_lr.items():
            ps = [p for p in groups[name] if id(p) in keep and id(p) not in taken]
            taken.update(id(p) for p in ps)
            if ps:
                special.append({"params": ps, "lr": lr, "name": name})
        rest = [p for p in params if id(p) not in taken]
        return make_optimizer(self.optimizer, [{"params": rest, "name": "codec"}] + special, self.lr,
                              self.betas, self.weight_decay)

    def phase_optimizer(self, phase, max_steps: int):
        """(optimizer, scheduler dict or None) of an auxiliary phase, with `phases` overrides."""
        spec = self.phases.get(phase.name, {})
        opt = make_optimizer(spec.get("optimizer", phase.optimizer), phase.params, spec.get("lr", phase.lr),
                             spec.get("betas", phase.betas), spec.get("weight_decay", phase.weight_decay),
                             where=f"schedule.phases.{phase.name}.optimizer")
        sch = step_scheduler(opt, spec.get("scheduler", "constant"), max_steps, spec.get("milestones", ()),
                             spec.get("gamma", 0.1), spec.get("warmup_steps", 0), spec.get("min_lr", 0.0))
        return opt, sch

    def phase_clip(self, phase) -> Optional[float]:
        """The gradient-norm clip of an auxiliary phase: `phases.<name>.clip_max_norm` when
        set, else the phase's own default (None: no clipping)."""
        spec = self.phases.get(phase.name, {})
        clip = spec["clip_max_norm"] if "clip_max_norm" in spec else phase.clip_max_norm
        return None if clip in (None, 0) else float(clip)

    def lr_scheduler(self, opt: Optimizer, max_steps: int) -> Optional[dict]:
        """A Lightning-style scheduler dict for the codec optimizer (or None)."""
        if self.scheduler == "plateau":
            sch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=self.plateau_factor, patience=self.plateau_patience)
            return {"scheduler": sch, "interval": "epoch"}
        return step_scheduler(opt, self.scheduler, max_steps, self.milestones, self.gamma,
                              self.warmup_steps, self.min_lr)
