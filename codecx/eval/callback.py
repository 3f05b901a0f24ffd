"""The periodic real-bitstream evaluation during training (`RealBitstreamEval`): a thin caller
of the evaluation loop (`codecx.eval.loop`) that logs what it measures."""
from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from codecx.config import ConfigError
from codecx.eval.load import prepare
from codecx.eval.loop import dataset_images, evaluate_codec
from codecx.eval.results import data_label, rd_results, results_dict, write_results
from codecx.lit.loggers import log_reconstructions
from codecx.metrics.anchors import CLASSICAL, resolve_anchor
from codecx.metrics.bdrate import POINT_DELTAS, point_deltas

LOGGED = {"bpp": "val/bpp", "bpp_est": "val/bpp_est", "bpp_streams": "val/bpp_streams",
          "psnr-rgb": "val/psnr", "ms-ssim": "val/ms_ssim",
          # against eval.anchor (RealBitstreamEval), and FID / KID with eval.fid_weights
          "delta_rate": "val/delta_rate", "delta_psnr": "val/delta_psnr",
          "delta_rate_msssim": "val/delta_rate_msssim", "delta_msssim_db": "val/delta_msssim_db",
          "fid": "val/fid", "kid": "val/kid",
          # LPIPS with eval.lpips_weights; the weight-free HF power ratio (codecx.metrics.realism)
          "lpips": "val/lpips", "hf_ratio": "val/hf_ratio"}

# the decomposition's ratios (Rethinking Latent Variable (WACV 2026) eq. 11)
LOGGED.update({"mse_a_ratio": "val/mse_a_ratio", "mse_q_ratio": "val/mse_q_ratio"})


class RealBitstreamEval(Callback):
    """Codes the validation images to real codecx files every `every_n_steps` codec steps (first
    `max_images` images) and once when training ends (`final_max_images`, None: all), on rank 0,
    with a CPU copy of the codec (`update(force=True)`; the training model is left untouched).
    Logs val/bpp (file bytes), val/bpp_est, val/psnr, val/ms_ssim; with an `anchor` curve the
    one-point Bjøntegaard deltas val/delta_rate (%), val/delta_psnr (dB), val/delta_rate_msssim,
    val/delta_msssim_db (never extrapolated: outside the anchor's range they are not logged);
    with `fid_weights` (torch-fidelity's InceptionV3 file) val/fid and val/kid on patches of the
    decoded images (Heusel et al. 2017; Bińkowski et al. 2018); with `lpips_weights` (the
    torchvision AlexNet file) val/lpips; always val/hf_ratio (high-frequency power of the decoded
    images over the originals', codecx.metrics.realism). With a W&B or TensorBoard logger also
    the RD points so far, an RD plot and `log_images` reconstructions. `final` holds the last result;
    with `write_results` the final one (when it covers every validation image) is also written
    as `results.json` / `per_image.csv` in the run directory, which `codecx report` reuses."""

    def __init__(self, every_n_steps: int = 100, max_images: Optional[int] = 2,
                 final_max_images: Optional[int] = None, log_images: int = 2,
                 anchor: Optional[str] = None, fid_weights: Optional[str] = None,
                 fid_patch: int = 256, write_results: bool = False,
                 lpips_weights: Optional[str] = None):
        if every_n_steps < 0:
            raise ValueError(f"eval.every_n_steps={every_n_steps}: must be >= 0 (0: only at the end)")
        self.every_n_steps, self.max_images = every_n_steps, max_images
        self.final_max_images, self.log_images, self.anchor = final_max_images, log_images, anchor
        self.fid_weights, self.fid_patch, self.write_results = fid_weights, fid_patch, write_results
        self.lpips_weights, self._lpips = lpips_weights, None
        self.history: List[Dict[str, float]] = []
        self.final: Optional[Dict[str, float]] = None
        self._last_step = -1
        self._anchors: Dict[Tuple[str, ...], Optional[Dict[str, Any]]] = {}  # per image set
        self._warned: set = set()
        self._fid: Any = None
        self._rows: List[Dict[str, Any]] = []
        if anchor is not None and str(anchor).lower() not in CLASSICAL:
            try:  # a packaged curve or a results JSON: checked before training starts
                self._fixed_anchor: Optional[Dict[str, Any]] = resolve_anchor(anchor)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"eval.anchor: {e}") from None
        else:
            self._fixed_anchor = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.anchor is None or not trainer.is_global_zero:
            return
        dataset = _val_dataset(trainer)  # jpeg / webp: computed once, on both image sets
        if dataset is not None:
            for n in dict.fromkeys((self.max_images, self.final_max_images)):
                self._anchor_for(dataset_images(dataset, n))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (self.every_n_steps and step > 0 and step % self.every_n_steps == 0
                and step not in (self._last_step, trainer.max_steps)  # the final one follows
                and trainer.is_global_zero):
            self._last_step = step
            self.run(trainer, pl_module, self.max_images)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.run_final(trainer, pl_module)

    def run_final(self, trainer: pl.Trainer, pl_module) -> Optional[Dict[str, float]]:
        """The end-of-training evaluation (also called by train.py when `fit` had nothing to do);
        SIGTERM stops it at once (codecx.lit.preempt.Preempted: training itself is complete)."""
        from codecx.lit.preempt import stop_on_sigterm

        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        with stop_on_sigterm("during the final evaluation", f"training is complete ({last}, step "
                             f"{trainer.global_step}); run the same command again to evaluate it",
                             pending=trainer.received_sigterm):
            self.final = self.run(trainer, pl_module, self.final_max_images)
            if self.final is not None and self.write_results:
                self._write_results(trainer, pl_module, self.final)
        return self.final

    # ------------------------------------------------------------------ evaluation
    def run(self, trainer: pl.Trainer, pl_module, max_images: Optional[int]) -> Optional[Dict[str, float]]:
        """Evaluate a CPU copy of `pl_module.codec` on the validation images; log and return the mean."""
        dataset = _val_dataset(trainer)
        if dataset is None:
            return None
        images = dataset_images(dataset, max_images)
        pairs: List[Tuple[str, Tensor, Tensor]] = []

        def keep(name: str, x: Tensor, x_hat: Tensor) -> None:
            if len(pairs) < self.log_images:
                pairs.append((name, x, x_hat))

        # MSE_a / MSE_q shares (Rethinking Latent Variable, WACV 2026); FID/KID of too few patches: one warning
        point, rows = evaluate_codec(prepare(copy.deepcopy(pl_module.codec)), getattr(pl_module, "config", {}) or {},
                                     images, lpips=self._lpips_metric(), fid=self._fid_metric(), progress=False,
                                     on_image=keep, decompose=True, complexity=False,
                                     on_fid_error=lambda m: self._warn_once("fid", f"val/fid, val/kid not logged: {m}"))
        self._rows, anchor = rows, self._anchor_for(images)
        if anchor is not None:
            point.update(self._deltas(anchor, point))
        point["step"] = trainer.global_step
        self.history.append(point)
        metrics = {LOGGED[k]: v for k, v in point.items() if k in LOGGED and v == v}  # drop NaN
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        self._log_rd(trainer, anchor)
        try:  # uint8 original | decoded + zoomed crops to W&B and TensorBoard (codecx.lit.loggers)
            log_reconstructions(trainer, pairs)
        except Exception as e:  # noqa: BLE001 - logging extras must never stop training
            self._warn_once("recon", f"reconstructions not logged: {type(e).__name__}: {e}")
        return point

    def _anchor_for(self, images: List[Tuple[str, Tensor]]) -> Optional[Dict[str, Any]]:
        """The anchor curve for these images: the fixed one, or jpeg / webp computed on them once."""
        if self.anchor is None or self._fixed_anchor is not None:
            return self._fixed_anchor
        key = tuple(name for name, _ in images)
        if key not in self._anchors:
            try:
                self._anchors[key] = resolve_anchor(str(self.anchor).lower(), images)
            except Exception as e:  # noqa: BLE001 - a missing anchor must not stop training
                self._warn_once("anchor", f"eval.anchor={self.anchor}: anchor curve not computed "
                                          f"({type(e).__name__}: {e}); val/delta_* not logged")
                self._anchors[key] = None
        return self._anchors[key]

    def _deltas(self, anchor: Dict[str, Any], point: Dict[str, float]) -> Dict[str, float]:
        """val/delta_* of this point; one warning per metric the first time it is missing."""
        deltas = point_deltas(anchor, point)
        missing = [key for key, value in deltas.items() if value != value and key not in self._warned
                   and point.get(POINT_DELTAS[key][0]) == point.get(POINT_DELTAS[key][0])]
        if missing:  # one warning for all of them, once per metric
            self._warned.update(missing)
            warnings.warn("not logged (not extrapolated): " + "; ".join(
                f"{LOGGED[k]}: {_outside(anchor, point, *POINT_DELTAS[k], self.anchor)}" for k in missing),
                stacklevel=2)
        return deltas

    def _fid_metric(self) -> Any:
        """A FIDKID accumulator when `fid_weights` is set and loads; else None (one warning)."""
        if self.fid_weights is None or "fid_off" in self._warned:
            return None
        if self._fid is None:
            try:
                from codecx.metrics.fid import FIDKID

                self._fid = FIDKID(weights=self.fid_weights, patch=self.fid_patch)
            except Exception as e:  # noqa: BLE001 - FID must never block training
                self._warn_once("fid_off", f"val/fid, val/kid not logged: {e}")
                return None
        return self._fid

    def _lpips_metric(self) -> Any:
        """LPIPS-Alex (Zhang et al. 2018) when `lpips_weights` is set and loads; else None (one warning)."""
        if self.lpips_weights is None or "lpips_off" in self._warned:
            return None
        if self._lpips is None:
            try:
                from codecx.metrics.lpips import LPIPSMetric

                self._lpips = LPIPSMetric("alex", weights=self.lpips_weights)
            except Exception as e:  # noqa: BLE001 - LPIPS must never block training
                self._warn_once("lpips_off", f"val/lpips not logged: {e}")
                return None
        return self._lpips

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _write_results(self, trainer: pl.Trainer, pl_module, point: Dict[str, float]) -> None:
        """results.json / per_image.csv of the final evaluation in the run directory (the layout
        `codecx report` reads back instead of evaluating last.ckpt again)."""
        dataset = _val_dataset(trainer)
        config = getattr(pl_module, "config", {}) or {}
        if dataset is None or point.get("images") != len(dataset) or "data" not in config:
            return  # a subset of the images: the report must evaluate all of them itself
        run_dir = Path(trainer.default_root_dir)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        model = config.get("model", {}).get("name", "codec")
        res = rd_results(run_dir.name, [{**point, "checkpoint": str(ckpt), "lmbda": config.get("lmbda")}],
                         f"{model}, lmbda={config.get('lmbda')}, {int(point['images'])} image(s) "
                         f"({data_label(config['data'])}), step {trainer.global_step}", config["data"],
                         step=trainer.global_step)
        write_results(run_dir, res, [{"checkpoint": str(ckpt), **r} for r in self._rows])

    def _log_rd(self, trainer: pl.Trainer, anchor: Optional[Dict[str, Any]] = None) -> None:
        """RD points table and RD plot to every W&B and TensorBoard logger (offline works too;
        `codecx.lit.loggers.log_rd_figures`); the reconstructions go through
        `codecx.lit.loggers.log_reconstructions`."""
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        from codecx.lit.loggers import log_rd_figures

        if not any(isinstance(lg, (WandbLogger, TensorBoardLogger)) for lg in trainer.loggers):
            return
        try:
            from codecx.metrics.rdplot import plot_rd

            cols = ["step", "bpp", "bpp_est", "psnr-rgb", "ms-ssim"]
            cols += [k for k in ("lpips", "hf_ratio", "fid", "kid") if any(k in p for p in self.history)]
            cols += [k for k in ("mse_a_ratio", "mse_q_ratio") if any(k in p for p in self.history)]
            cols += [k for k in POINT_DELTAS if any(k in p for p in self.history)]
            data = [[p.get(c) for c in cols] for p in self.history]
            with tempfile.TemporaryDirectory() as tmp:
                curve = results_dict("training (real bitstreams)", self.history)
                with warnings.catch_warnings():  # an anchor without MS-SSIM: its PSNR panel only
                    warnings.filterwarnings("ignore", message="skipping .* on 'ms-ssim'")
                    png = plot_rd([curve], Path(tmp) / "rd.png", anchors=[anchor] if anchor else ())
                log_rd_figures(trainer, cols, data, png)
        except Exception as e:  # noqa: BLE001 - logging extras must never stop training
            warnings.warn(f"RD plot / points not logged: {type(e).__name__}: {e}", stacklevel=2)


def _outside(anchor: Dict[str, Any], point: Dict[str, float], metric: str, kind: str,
             spec: Any) -> str:
    """Why a one-point delta is missing: the point against the anchor's range, in words."""
    import math

    from codecx.metrics.bdrate import anchor_curve, msssim_db

    name = f"anchor {spec}"
    try:
        ra, qa = anchor_curve(anchor, metric)
    except (KeyError, ValueError) as e:
        return f"{name} has no usable {metric} curve ({e})"
    unit = "dB" if metric == "psnr-rgb" else "dB (MS-SSIM)"
    if kind == "rate":
        q = point.get(metric, math.nan)
        q = float(msssim_db(q)) if metric == "ms-ssim" and q == q and q < 1 else q
        return (f"the run's {metric} {q:.2f} {unit} is outside {name}'s range "
                f"{qa[0]:.2f}-{qa[-1]:.2f} {unit}")
    return (f"the run's rate {point.get('bpp', math.nan):.4f} bpp is outside {name}'s range "
            f"{ra[0]:.4f}-{ra[-1]:.4f} bpp")


def _val_dataset(trainer: pl.Trainer) -> Optional[Any]:
    """The validation image dataset: the datamodule's `val_set`, else the val dataloader's."""
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "val_set", None) is None and hasattr(dm, "setup"):
        dm.setup("validate")
    ds = getattr(dm, "val_set", None) if dm is not None else None
    if ds is None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        ds = getattr(loader, "dataset", None)
    return ds if ds is not None and len(ds) > 0 else None
