"""The one LightningModule: manual optimisation over a codec phase and auxiliary phases."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from compressai.entropy_models import EntropyModel, GaussianConditional
from compressai.models.utils import update_registered_buffers
from torch import Tensor

from codecx.losses import rate_distortion
from codecx.models.codec import Codec
from codecx.regularizers.base import AuxPhase, NoRegularizer, Regularizer
from codecx.lit.schedule import Schedule
from codecx.types import CodecOutput

_CDF_BUFFERS = ["_quantized_cdf", "_offset", "_cdf_length"]


def quantile_phase(codec: Codec, lr: float) -> AuxPhase:
    """The entropy bottleneck's quantile fit (CompressAI's aux loss), as an auxiliary phase."""
    params = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    return AuxPhase("aux", params, lambda x, out: (codec.backbone.aux_loss(), {}), lr=lr)


def detach_output(out: CodecOutput) -> CodecOutput:
    """The codec's outputs cut from the codec's graph (auxiliary phases train other models)."""
    return CodecOutput(
        x_hat=out.x_hat.detach(), y=out.y.detach(), y_hat=out.y_hat.detach(),
        likelihoods={k: v.detach() for k, v in out.likelihoods.items()},
        params=out.params, z_hat=None if out.z_hat is None else out.z_hat.detach())


class LitCodec(pl.LightningModule):
    """Trains a :class:`Codec` with a :class:`Regularizer` (Algorithm 1 of the CSE paper's
    alternating scheme, generalised): each step updates the codec on
    `bpp + lmbda * 255^2 * MSE + reg` with every auxiliary model frozen, then runs each
    auxiliary phase (entropy-bottleneck quantiles, then the regularizer's own models) on
    detached codec outputs with the codec frozen. Only the codec step counts as a global step.
    """

    def __init__(self, codec: Codec, regularizer: Optional[Regularizer] = None,
                 lmbda: float = 0.0067, schedule: Optional[Schedule] = None,
                 config: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not lmbda > 0:
            raise ValueError(f"lmbda={lmbda}: the rate-distortion trade-off must be positive")
        self.automatic_optimization = False
        self.codec = codec
        self.regularizer = regularizer if regularizer is not None else NoRegularizer()
        self.regularizer.attach(codec)
        self.lmbda = float(lmbda)
        self.schedule = schedule or Schedule()
        self.config = config or {}
        self.phases: List[AuxPhase] = [quantile_phase(codec, self.schedule.aux_lr)]
        self.phases += self.regularizer.aux_phases()

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        aux = {id(p) for ph in self.phases for p in ph.params}
        codec_params = [p for p in self.codec.parameters() if id(p) not in aux and p.requires_grad]
        opts = [self.schedule.codec_optimizer(codec_params)]
        opts += [torch.optim.Adam(ph.params, lr=ph.lr, betas=ph.betas,
                                  weight_decay=ph.weight_decay) for ph in self.phases]
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**6
        sch = self.schedule.lr_scheduler(opts[0], max_steps)
        return opts, ([sch] if sch else [])

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Tensor, batch_idx: int):
        x = batch
        codec_opt, *aux_opts = self.optimizers()
        self.toggle_optimizer(codec_opt)
        out = self.codec(x)
        terms = rate_distortion(x, out, self.lmbda)
        reg = self.regularizer(x, out)
        loss = terms["loss"] + reg.loss
        codec_opt.zero_grad()
        self.manual_backward(loss)
        if self.schedule.clip_max_norm:
            self.clip_gradients(codec_opt, gradient_clip_val=self.schedule.clip_max_norm,
                                gradient_clip_algorithm="norm")
        codec_opt.step()
        self.untoggle_optimizer(codec_opt)

        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs["train/loss"] = loss.detach()
        logs.update({f"train/{k}": v for k, v in reg.metrics.items()})
        if not isinstance(self.regularizer, NoRegularizer):  # |reg| / (|R + lmbda D| + |reg|)
            r = reg.loss.detach().abs()
            logs["train/reg_share"] = r / (terms["loss"].detach().abs() + r).clamp_min(1e-12)
        detached = detach_output(out)
        for phase, opt in zip(self.phases, aux_opts):
            self.toggle_optimizer(opt)
            aux_loss, metrics = phase.loss(x, detached)
            opt.zero_grad()
            self.manual_backward(aux_loss)
            opt.optimizer.step()  # the raw step: aux phases do not advance global_step
            self.untoggle_optimizer(opt)
            logs[f"train/{phase.name}_loss"] = aux_loss.detach()
            logs.update({f"train/{k}": v for k, v in metrics.items()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=x.size(0),
                      sync_dist=self.trainer.world_size > 1)
        self.log("bpp", terms["bpp"].detach(), prog_bar=True, logger=False, batch_size=x.size(0))
        self.log("psnr", terms["psnr"], prog_bar=True, logger=False, batch_size=x.size(0))
        self._step_schedulers("step")
        return loss.detach()

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
        terms = rate_distortion(x, out, self.lmbda)
        reg = self.regularizer(x, out)
        # val/loss is the rate-distortion objective R + lmbda D that best.ckpt and the plateau
        # schedule follow; a regularizer's term (e.g. -alpha H(X|X_hat)) is logged beside it
        logs = {"val/loss": terms["loss"], "val/reg_loss": reg.loss, "val/bpp_est": terms["bpp"],
                "val/mse": terms["mse"], "val/psnr_est": terms["psnr"]}
        logs.update({f"val/{k}": v for k, v in reg.metrics.items()})
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
