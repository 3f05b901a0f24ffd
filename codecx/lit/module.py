"""The one LightningModule: manual optimisation over a codec phase and auxiliary phases."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from compressai.entropy_models import EntropyModel, GaussianConditional
from compressai.models.utils import update_registered_buffers
from torch import Tensor

from codecx.losses import MSE, Distortion, Rate
from codecx.models.codec import Codec
from codecx.regularizers.base import AuxPhase, Regularizer
from codecx.lit.schedule import Schedule
from codecx.lit.speed import compile_setting, speed_up_transforms, wants_compile
from codecx.types import CodecOutput, EntropyParams

_CDF_BUFFERS = ["_quantized_cdf", "_offset", "_cdf_length"]


class NonFiniteLossError(RuntimeError):
    """A loss term or the codec's gradient became NaN or infinite (training stops there)."""

    def __init__(self, step: int, term: str):
        self.step, self.term = int(step), term
        super().__init__(f"non-finite {term} at step {step}: training stopped (the last checkpoint "
                         "is kept; lower schedule.lr or check lmbda / the data)")


def quantile_phase(codec: Codec, lr: float) -> AuxPhase:
    """The entropy bottleneck's quantile fit (CompressAI's aux loss), as an auxiliary phase."""
    params = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    return AuxPhase("aux", params, lambda x, out: (codec.backbone.aux_loss(), {}), lr=lr, uses_batch=False)


def detach_output(out: CodecOutput) -> CodecOutput:
    """The codec's outputs cut from the codec's graph (auxiliary phases train other models)."""
    d = lambda t: None if t is None else t.detach()  # noqa: E731
    p = out.params
    return CodecOutput(
        x_hat=d(out.x_hat), y=d(out.y), y_hat=d(out.y_hat),
        likelihoods={k: v.detach() for k, v in out.likelihoods.items()},
        params=EntropyParams(d(p.means), d(p.scales), p.entropy_model), z_hat=d(out.z_hat),
        metrics={k: d(v) for k, v in out.metrics.items()},
        losses={k: d(v) for k, v in out.losses.items()})


def _scalar(v: Tensor) -> Tensor:
    v = v.detach()
    return v if v.dim() == 0 else v.float().mean()


class LitCodec(pl.LightningModule):
    """Trains a :class:`Codec` (Algorithm 1 of the CSE paper's alternating scheme, generalised).

    Each step updates the codec on `rate + lmbda * distortion + sum(stage losses) +
    sum(regularizer losses)` with every auxiliary model frozen, then runs each auxiliary
    phase (entropy-bottleneck quantiles, then the regularizers' own models) on detached codec
    outputs with the codec frozen. Only the codec step counts as a global step. The module
    names no method: every stage reports `losses` and `metrics`, which are summed and logged.

    `accumulate_grad_batches` = k (`trainer.accumulate_grad_batches`; Lightning's own key is
    refused under manual optimisation): every loss, the codec's and each phase's, is
    back-propagated divided by k, and the codec and every phase step (with their clipping) once
    every k batches, so k batches of B train like one batch of kB; global steps, `max_steps`,
    the learning-rate schedules, `schedule.stages` and the rate's warm-up count optimizer
    steps. A phase whose loss ignores the batch (`uses_batch=False`: the quantile fit) runs
    once per optimizer step, after the codec's step, as without accumulation.
    """

    def __init__(self, codec: Codec, regularizer: Union[None, Regularizer, Sequence[Regularizer]] = None,
                 lmbda: float = 0.0067, schedule: Optional[Schedule] = None,
                 config: Optional[Dict[str, Any]] = None, distortion: Optional[Distortion] = None,
                 rate: Optional[Rate] = None, accumulate_grad_batches: int = 1,
                 channels_last: bool = False, compile: Any = False):
        super().__init__()
        if not lmbda > 0 or not math.isfinite(lmbda):
            raise ValueError(f"lmbda={lmbda}: the rate-distortion trade-off must be a positive finite number")
        if isinstance(accumulate_grad_batches, bool) or int(accumulate_grad_batches) != accumulate_grad_batches \
                or accumulate_grad_batches < 1:
            raise ValueError(f"trainer.accumulate_grad_batches={accumulate_grad_batches}: must be an integer >= 1 "
                             "(batches per optimizer step)")
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        # trainer.channels_last / trainer.compile (codecx.lit.speed, issue 33 item 3)
        self.channels_last = bool(channels_last)
        self.compile_setting = compile_setting(compile)
        self.sped_up: List[str] = []  # the transforms changed at fit start
        self._warmup_start: Optional[float] = None
        self._accumulated = 0  # batches back-propagated since the last optimizer step
        self.automatic_optimization = False
        self.codec = codec
        regs = [] if regularizer is None else (
            [regularizer] if isinstance(regularizer, torch.nn.Module) else list(regularizer))
        self.regularizers = torch.nn.ModuleList(regs)
        for r in self.regularizers:
            r.attach(codec)
        self.distortion = distortion if distortion is not None else MSE()
        self.rate = rate if rate is not None else Rate()
        self.lmbda = float(lmbda)
        if codec.lmbda is None:
            codec.lmbda = self.lmbda
        self.schedule = schedule or Schedule()
        self.config = config or {}
        self.phases: List[AuxPhase] = [quantile_phase(codec, self.schedule.aux_lr)]
        for r in self.regularizers:
            self.phases += r.aux_phases()
        self._check_stage_groups()
        self._stage: Optional[str] = None

    @property
    def regularizer(self) -> Optional[Regularizer]:
        """The first regularizer (None without one)."""
        return self.regularizers[0] if len(self.regularizers) else None

    # ------------------------------------------------------------------ stages
    def groups(self) -> Dict[str, list]:
        """Every named parameter group a stage can train: the codec's and each phase's."""
        groups = self.codec.parameter_groups()
        for ph in self.phases:
            if ph.name != "aux":
                groups[ph.name] = list(ph.params)
        return groups

    def _check_stage_groups(self) -> None:
        valid = set(self.groups()) | {"aux"}
        for st in self.schedule.stages:
            unknown = [g for g in st["trainable"] if g not in valid]
            if unknown:
                raise ValueError(f"schedule.stages {st['name']}: unknown parameter group(s) {unknown}; "
                                 f"valid: {sorted(valid)}")

    def _apply_stage(self) -> Optional[Dict[str, Any]]:
        """Freeze what the stage of the current step does not train (idempotent, resume-safe)."""
        stage = self.schedule.stage_at(self.global_step)
        if stage is None or stage["name"] == self._stage:
            return stage
        trainable = set(stage["trainable"])
        for name, params in self.codec.parameter_groups().items():
            for p in params:
                p.requires_grad_(name in trainable)
        self._stage = stage["name"]
        return stage

    def _phase_active(self, phase: AuxPhase, stage: Optional[Dict[str, Any]]) -> bool:
        if stage is None:
            return True
        group = "entropy" if phase.name == "aux" else phase.name
        return group in stage["trainable"] or phase.name in stage["trainable"]

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        aux = {id(p) for ph in self.phases for p in ph.params}
        codec_params = [p for p in self.codec.parameters() if id(p) not in aux]
        opts = [self.schedule.codec_optimizer(codec_params, self.codec.parameter_groups())]
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**6
        schedulers = [self.schedule.lr_scheduler(opts[0], max_steps)]
        for ph in self.phases:
            opt, sch = self.schedule.phase_optimizer(ph, max_steps)
            opts.append(opt)
            schedulers.append(sch)
        return opts, [s for s in schedulers if s]

    # ------------------------------------------------------------------ the loss
    def codec_loss(self, x: Tensor, out: CodecOutput, step: int = 0):
        """(loss, terms): `rate + lmbda * distortion + sum(out.losses) + sum(regularizers)`,
        each term by name (for logging and the non-finite check)."""
        rate, r_metrics = self.rate(out.likelihoods, x, step)
        dist, d_metrics = self.distortion(x, out.x_hat)
        terms: Dict[str, Tensor] = {"rate": rate, "distortion": dist}
        loss = rate + self.lmbda * dist
        for k, v in out.losses.items():
            terms[k] = v
            loss = loss + v
        metrics = {**r_metrics, **d_metrics, "rd_loss": loss.detach()}
        reg_total = None
        for r in self.regularizers:
            reg = r(x, out)
            name = getattr(r, "name", None) or type(r).__name__
            terms[name] = reg.loss
            reg_total = reg.loss if reg_total is None else reg_total + reg.loss
            metrics.update(reg.metrics)
        if reg_total is not None:
            loss = loss + reg_total
            metrics["reg_loss"] = reg_total.detach()
        return loss, terms, metrics

    def _check_finite(self, terms: Dict[str, Tensor]) -> None:
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
        if bad:
            raise NonFiniteLossError(self.global_step, "loss term " + ", ".join(bad))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Tensor, batch_idx: int):
        x = batch
        k = self.accumulate_grad_batches
        first, self._accumulated = self._accumulated == 0, self._accumulated + 1
        last = self._accumulated >= k  # this batch completes k: every optimizer steps
        stage = self._apply_stage()
        codec_opt, *aux_opts = self.optimizers()
        self.toggle_optimizer(codec_opt)
        out = self.codec(x)
        loss, terms, metrics = self.codec_loss(x, out, self.global_step)
        self._check_finite(terms)
        if first:
            codec_opt.zero_grad()
        self.manual_backward(loss / k if k > 1 else loss)
        if last:
            self._check_grad_finite(codec_opt)
            if self.schedule.clip_max_norm:
                self.clip_gradients(codec_opt, gradient_clip_val=self.schedule.clip_max_norm,
                                    gradient_clip_algorithm="norm")
            codec_opt.step()
        self.untoggle_optimizer(codec_opt)

        logs = {f"train/{k}": _scalar(v) for k, v in {**out.metrics, **metrics}.items()}
        logs.update({f"train/{k}": _scalar(v) for k, v in out.losses.items()})
        logs["train/loss"] = loss.detach()
        if "reg_loss" in metrics:  # |reg| / (|R + lmbda D| + |reg|)
            r = metrics["reg_loss"].abs()
            logs["train/reg_share"] = r / (metrics["rd_loss"].abs() + r).clamp_min(1e-12)
        detached = detach_output(out)
        for phase, opt in zip(self.phases, aux_opts):
            once = not phase.uses_batch  # e.g. the quantile fit: once per optimizer step
            if not self._phase_active(phase, stage) or (once and not last):
                continue
            self.toggle_optimizer(opt)
            aux_loss, aux_metrics = phase.loss(x, detached)
            if not bool(torch.isfinite(aux_loss.detach())):
                raise NonFiniteLossError(self.global_step, f"{phase.name} phase loss")
            if first or once:
                opt.zero_grad()
            self.manual_backward(aux_loss / k if k > 1 and not once else aux_loss)
            if last:
                clip = self.schedule.phase_clip(phase)
                if clip:
                    self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
                opt.optimizer.step()  # the raw step: aux phases do not advance global_step
            self.untoggle_optimizer(opt)
            logs[f"train/{phase.name}_loss"] = aux_loss.detach()
            logs.update({f"train/{k}": _scalar(v) for k, v in aux_metrics.items()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=x.size(0),
                      sync_dist=self.trainer.world_size > 1)
        self.log("bpp", metrics["bpp"].detach(), prog_bar=True, logger=False, batch_size=x.size(0))
        self.log("psnr", metrics["psnr"], prog_bar=True, logger=False, batch_size=x.size(0))
        if last:
            self._step_schedulers("step")  # per optimizer step
            self._accumulated = 0
        return loss.detach()

    def on_fit_start(self) -> None:
        """`trainer.channels_last` / `trainer.compile`: the transforms in training mode run
        channels-last / compiled (codecx.lit.speed.speed_up_transforms, in place)."""
        if self.sped_up:
            return
        compiled = wants_compile(self.compile_setting, self.trainer.max_steps)
        self.sped_up = speed_up_transforms(self.codec.backbone, self.channels_last, compiled,
                                           strict=self.compile_setting is True)
        if compiled and self.sped_up and self.trainer.is_global_zero:
            why = "" if self.compile_setting is True else f" (trainer.compile=auto: {self.trainer.max_steps} steps)"
            print(f"codecx: torch.compile of {', '.join(self.sped_up)}{why}; the first step compiles them",
                  flush=True)
            self._warmup_start = -1.0  # timed from the first batch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._warmup_start == -1.0:
            self._warmup_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._warmup_start is not None and self._warmup_start >= 0:
            print(f"codecx: torch.compile warm-up: first step {time.perf_counter() - self._warmup_start:.1f} s",
                  flush=True)
            self._warmup_start = None

    def _check_grad_finite(self, opt) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads and self.trainer.precision not in ("16-mixed", "16"):  # a GradScaler skips inf steps
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            if not bool(torch.isfinite(norm)):
                raise NonFiniteLossError(self.global_step, "codec gradient")

    def _step_schedulers(self, interval: str, metric: Optional[Tensor] = None) -> None:
        configs = self.trainer.lr_scheduler_configs
        for cfg in configs:
            if cfg.interval != interval:
                continue
            if isinstance(cfg.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if metric is not None:
                    cfg.scheduler.step(metric)
            else:
                cfg.scheduler.step()

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Tensor, batch_idx: int):
        x = batch
        out = self.codec(x)
        _, _, metrics = self.codec_loss(x, out, self.global_step)
        # val/loss is the rate-distortion objective R + lmbda D (+ the stages' terms) that
        # best.ckpt and the plateau schedule follow; a regularizer's term is logged beside it
        logs = {"val/loss": metrics.pop("rd_loss"), "val/bpp_est": metrics.pop("bpp"),
                "val/psnr_est": metrics.pop("psnr"),
                "val/reg_loss": metrics.pop("reg_loss", x.new_zeros(()))}
        logs.update({f"val/{k}": _scalar(v) for k, v in {**out.metrics, **metrics}.items()})
        self.log_dict(logs, on_epoch=True, batch_size=x.size(0), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metric = self.trainer.callback_metrics.get("val/loss")
        if not self.trainer.sanity_checking:
            self._step_schedulers("epoch", metric)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Every checkpoint carries CDF tables that match its weights (`update(force=True)`)."""
        self.codec.update(force=True)
        checkpoint["state_dict"] = self.state_dict()
        checkpoint["codecx_config"] = self.config

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        resize_cdf_buffers(self, checkpoint["state_dict"])


def resize_cdf_buffers(module: torch.nn.Module, state_dict: Dict[str, Tensor]) -> None:
    """Resize entropy models' CDF buffers to the sizes stored in `state_dict` (CompressAI)."""
    for name, m in module.named_modules():
        if isinstance(m, EntropyModel) and f"{name}._quantized_cdf" in state_dict:
            names = _CDF_BUFFERS + (["scale_table"] if isinstance(m, GaussianConditional) else [])
            update_registered_buffers(m, name, names, state_dict, policy="resize")
