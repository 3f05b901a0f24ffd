"""Stochastic Gumbel annealing (SGA) of Yang, Bamler & Mandt, "Improving inference for neural
image compression" (NeurIPS 2020), as used with the shallow decoders of Yang & Mandt (ICCV
2023, section 7.3): per image, optimise the continuous latents `y` and `z` for
`bpp + lmbda * D` (D: the codec's configured distortion, 255^2 MSE by default) through an
annealed stochastic relaxation of rounding, then let the codec round and code them as usual
(decoder and bitstream format unchanged). The relaxed loss is one walk of the codec through
`SGAChannel` (codecx.quantizers.channels), so the latent transforms between y_hat and g_s take
part. The encoder keeps the original latents of an image unless the refined ones give a lower
R + lmbda D measured on the real bitstream (bytes of the coded y and z streams, distortion of the
decoded image).

Relaxation of rounding, per element v (the offset from the coding grid: `y - means` for
Gaussian priors, `y - medians` / `z - medians` for factorized entropy models)::

    logit_down = -atanh(clip(v - floor(v), -1+eps, 1-eps)) / tau
    logit_up   = -atanh(clip(ceil(v) - v,  -1+eps, 1-eps)) / tau
    (s_down, s_up) = softmax((logits + Gumbel noise) / tau)     # two-class Gumbel-softmax
    v_tilde = floor(v) * s_down + ceil(v) * s_up

tau -> 0 gives rounding to the nearest grid point; large tau the midpoint of the bin.

The grid (`grid`): "coder" (default, shallow-ntc) relaxes around the grid the codec codes on,
`means + Z` for `y` and `medians + Z` for `z`; "integer" relaxes `y` and `z` themselves on Z,
as the 2020 code does (mandt-lab/improving-inference-for-neural-image-compression, sga.py:
`floor(y)`, `ceil(y)`, rate of the integer point under N(mu, sigma) convolved with U). The
codec still codes `round(y - means) + means`, so with "integer" the optimised objective is
not the coded one (the 2020 code measured estimated bits of the integer points instead);
`keep_best` guards the real bitstream.

A batch of images of one size is refined in one pass (`batch_size`; issue 33): the loss is the
sum of the per-image losses, so each image's gradient is its own (Adam's moments are
per element, the tau and lr schedules are shared by step), every image draws its Gumbel noise
from its own generator seeded with `seed`, and the never-worse check is per image: each image
gets the latents it would get alone (up to the last bits batched convolutions may change).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from codecx.inference.base import EncoderRefiner
from codecx.quantizers.channels import Channel

__all__ = ["SGA", "SGAChannel", "SCHEDULES", "GRIDS", "TauSchedule", "sga_round"]

_EPS = 1e-5
#: one generator for the whole tensor, or one per image (batch dimension 0)
Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


@dataclass(frozen=True)
class TauSchedule:
    """`tau(t) = clip(tau0 * exp(-rate * max(0, t - offset)), tau_min, tau0)`."""

    tau0: float
    rate: float
    offset: int
    tau_min: float = 1e-8

    def __call__(self, t: int) -> float:
        return min(self.tau0, max(self.tau_min, self.tau0 * math.exp(-self.rate * max(0, t - self.offset))))


#: shallow_ntc: mandt-lab/shallow-ntc (Adam 5e-3, x0.1 at 90% of 3000 steps);
#: original: Yang, Bamler & Mandt 2020 (2000 steps, Adam 5e-3 constant: the 2020 code's rd_lr)
SCHEDULES = {
    "shallow_ntc": TauSchedule(0.5, 5e-4, 200),
    "original": TauSchedule(0.5, 1e-3, 700),
}
#: the rounding grid of the relaxation: the coder's (means / medians + Z) or Z (the 2020 code)
GRIDS = ("coder", "integer")


def _uniform(shape, generator: Generators, like: Tensor) -> Tensor:
    """U(0, 1) noise of `shape`; with a list of generators, image i (dim 0) draws from the i-th,
    the same numbers as alone (a draw of (1, ...) equals one of (...))."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"SGA: {len(generator)} noise generators for a batch of {shape[0]} images")
        return torch.stack([torch.rand(shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generator])
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def sga_round(v: Tensor, tau: float, generator: Generators = None) -> Tensor:
    """One stochastic Gumbel-annealed rounding sample of `v` at temperature `tau` (Yang et al.
    2020, eq. 7), differentiable in `v`; `generator`: one, or one per image of the batch."""
    lo, hi = torch.floor(v), torch.ceil(v)
    logit_down = -torch.atanh((v - lo).clamp(-1 + _EPS, 1 - _EPS)) / tau
    logit_up = -torch.atanh((hi - v).clamp(-1 + _EPS, 1 - _EPS)) / tau
    logits = torch.stack((logit_down, logit_up), dim=-1)
    u = _uniform(logits.shape, generator, v)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    s = F.softmax((logits + gumbel) / tau, dim=-1)
    return lo * s[..., 0] + hi * s[..., 1]


class SGA(EncoderRefiner):
    """Encoder refiner: stochastic Gumbel annealing of `y` and `z` (Yang, Bamler, Mandt 2020).

    Args:
        steps: optimisation steps per image (shallow-ntc 3000, the 2020 original 2000).
        lr: Adam learning rate (5e-3, shallow-ntc's and the 2020 code's).
        schedule: tau schedule, "shallow_ntc" or "original" (see SCHEDULES).
        grid: "coder" (relax around the means / medians the codec rounds on) or "integer"
            (relax y and z on Z, as the 2020 code; see the module docstring).
        tau_rate, tau_offset: replace the schedule's decay rate / start step (None: keep;
            e.g. a short CPU run anneals faster).
        lr_drop_at: fraction of the steps after which lr is multiplied by `lr_drop` (None: never).
        lr_drop: the factor (0.1).
        lmbda: the trade-off; None: the codec's (the checkpoint's) lmbda.
        seed: seed of the Gumbel noise; every call starts from it, and every image of a batch
            draws from its own generator seeded with it, so the eval forward and `compress` of
            one image pick the same latents, alone or in a batch.
        keep_best: per image, code both the original and the refined latents with the
            codec's real coder (`CodecView.code`: `compress(x, latents=...)`, then `decompress`,
            both candidates in one call) and keep the refined ones only when their `bpp + lmbda D`
            is lower (bpp: bytes of the y and z streams; D: the configured distortion of the
            decoded image in 8 bits), so SGA is never worse than
            no SGA on the real bitstream. `report()` / per_image.csv: `sga_kept`,
            `sga_rd_original`, `sga_rd_refined`.
        progress: show a progress bar.
        curves: a CSV file to append every optimised image's loss curve to (columns image,
            step, tau, loss, lmbda; image counts the images the refiner optimised, lmbda tells
            the checkpoints of one evaluation apart), None: none.
        batch_size: how many images of one size the evaluator refines in one call (codecx.eval:
            one pass per group; a GPU runs them at once); 1: one image at a time. Any call
            refines the batch it is given; the results per image do not depend on it.
        device: run the optimisation on this device (e.g. "cuda") with a copy of the codec
            (`CodecView.on`), the latents coming back to the codec's device; the real check and
            the coding stay with the codec (eval codes on the CPU); None: the codec's device.
    """

    #: relaxes scalar rounding: refused with a lattice quantizer (codecx.config.check)
    scalar_only = True
    #: per image: which latents were coded; with keep_best the real bpp + lmbda D of both (`report`)
    report_columns = ("sga_kept", "sga_rd_original", "sga_rd_refined")

    def __init__(self, steps: int = 3000, lr: float = 5e-3, schedule: str = "shallow_ntc",
                 lr_drop_at: Optional[float] = 0.9, lr_drop: float = 0.1,
                 lmbda: Optional[float] = None, seed: int = 0, keep_best: bool = True,
                 progress: bool = False, tau_rate: Optional[float] = None,
                 tau_offset: Optional[int] = None, curves: Optional[str] = None, grid: str = "coder",
                 batch_size: int = 1, device: Optional[str] = None):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"refine.sga.schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if grid not in GRIDS:
            raise ValueError(f"refine.sga.grid={grid!r}: choose one of {', '.join(GRIDS)} (coder: around "
                             "the means / medians the codec rounds on; integer: on Z, as the 2020 code)")
        if int(steps) < 0:
            raise ValueError(f"refine.sga.steps={steps}: need a number of steps >= 0")
        if not float(lr) > 0:
            raise ValueError(f"refine.sga.lr={lr}: the learning rate must be positive")
        if lr_drop_at is not None and not 0 <= float(lr_drop_at) <= 1:
            raise ValueError(f"refine.sga.lr_drop_at={lr_drop_at}: a fraction of the steps in [0, 1] (or null)")
        if lmbda is not None and not float(lmbda) > 0:
            raise ValueError(f"refine.sga.lmbda={lmbda}: must be positive (or null: the checkpoint's)")
        if int(batch_size) < 1:
            raise ValueError(f"refine.sga.batch_size={batch_size}: need at least 1 image per call")
        self.batch_size = int(batch_size)
        if device not in (None, "") and torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"refine.sga.device={device}: torch sees no CUDA device; use null (the codec's device)")
        self.device = None if device in (None, "") else str(device)
        self.steps, self.lr, self.schedule_name, self.grid = int(steps), float(lr), schedule, grid
        base = SCHEDULES[schedule]
        self.tau = TauSchedule(base.tau0, base.rate if tau_rate is None else float(tau_rate),
                               base.offset if tau_offset is None else int(tau_offset), base.tau_min)
        self.lr_drop_at = None if lr_drop_at is None else float(lr_drop_at)
        self.lr_drop = float(lr_drop)
        self.lmbda = None if lmbda is None else float(lmbda)
        self.seed, self.keep_best, self.progress = int(seed), bool(keep_best), bool(progress)
        #: what the last call did: the relaxed-loss curve (summed over the batch) and per image
        #: ("curves"); per image, which latents were kept ("refined" / "original") and, with
        #: keep_best, the real (loss, bpp, D) of both
        self.last: Dict[str, Any] = {}
        self.curves = None if curves in (None, "") else str(curves)
        self._calls = 0

    # ------------------------------------------------------------------ the loss
    def relaxed_loss(self, codec, x: Tensor, y: Tensor, z: Optional[Tensor], lmbda: float,
                     tau: float, generator: Generators = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(loss, bpp, D) of the SGA relaxation at temperature `tau`: one walk of the codec
        (`codec`: its view) through `SGAChannel`, so g_s sees what the decoder's latent
        transforms make of the relaxed latents, and D is the codec's configured distortion
        (`distortion=`; 255^2 MSE by default). `bpp` and `D` per image of `x` (shape (B,)),
        `loss` the sum over the images of bpp + lmbda D: each image's gradient is its own."""
        out = codec.walk(SGAChannel(self, codec.quantizer, tau, generator), x, latents=(y, z))
        n = x.size(0)
        bits = sum(-torch.log2(lik).reshape(n, -1).sum(1) for lik in out.likelihoods.values())
        bpp = bits / (x.shape[-2] * x.shape[-1])
        d = torch.stack([codec.distortion(x[i : i + 1], out.x_hat[i : i + 1])[0] for i in range(n)])
        return (bpp + lmbda * d).sum(), bpp, d

    def relax(self, v: Tensor, offset: Optional[Tensor], tau: float, generator: Generators = None) -> Tensor:
        """One SGA sample of `v` on the relaxation's grid: `offset + Z` (grid="coder"; the means
        or medians) or Z (grid="integer", the 2020 code: `offset` is ignored)."""
        if self.grid == "integer" or offset is None:
            return sga_round(v, tau, generator)
        return offset + sga_round(v - offset, tau, generator)

    @torch.no_grad()
    def real_loss(self, codec, x: Tensor, y: Tensor, z: Optional[Tensor], lmbda: float
                  ) -> List[Tuple[float, float, float]]:
        """Per image of `x`: (loss, bpp, D) of coding `(y, z)` for real (`codec`: its view):
        bpp from the bytes of the y and z streams, D the configured distortion of the decoded
        image against `x`, both in 8 bits (what eval measures); loss = bpp + lmbda D."""
        from codecx.metrics.rd import to_uint8

        strings, x_hat = codec.code(x, (y, z))
        pixels = x.shape[-2] * x.shape[-1]
        out = []
        for i, streams in enumerate(strings):
            bpp = 8 * sum(len(s) for s in streams) / pixels
            d = float(codec.distortion(to_uint8(x[i : i + 1]) / 255, to_uint8(x_hat[i : i + 1]) / 255)[0])
            out.append((bpp + lmbda * d, bpp, d))
        return out

    # ------------------------------------------------------------------ the refiner
    def forward(self, x: Tensor, codec, y: Tensor, z: Optional[Tensor], lmbda: Optional[float]
                ) -> Tuple[Tensor, Optional[Tensor]]:
        lmbda = self.lmbda if self.lmbda is not None else lmbda
        if lmbda is None:
            raise ValueError("SGA needs the rate-distortion trade-off: the codec has no lmbda "
                             "(a CompressAI state dict?); set refine.sga.lmbda=VALUE")
        if int(getattr(codec.quantizer, "dim", 1)) != 1:
            raise ValueError(f"SGA relaxes scalar rounding; the {type(codec.quantizer).__name__} "
                             "quantizer codes vectors on a lattice: use a scalar quantizer with refine=sga")
        self.last = {}
        if self.steps == 0:
            return y, z
        if self.keep_best:
            try:
                codec.check_updated()
            except RuntimeError as e:
                raise RuntimeError(f"SGA (keep_best) codes the original and refined latents: {e} "
                                   "(or set refine.sga.keep_best=false)") from None
        y0, z0 = y.detach(), None if z is None else z.detach()
        work, on = (codec, y.device) if self.device is None else (codec.on(self.device), torch.device(self.device))
        with torch.enable_grad():
            y_opt, z_opt, curve = self._optimise(work, x.detach().to(on), y0.to(on), None if z0 is None else z0.to(on),
                                                 float(lmbda))
        y_opt, z_opt = y_opt.to(y.device), None if z_opt is None else z_opt.to(y.device)
        n = y.size(0)
        self.last = {"curve": [sum(c[2]) for c in curve], "curves": [[c[2][i] for c in curve] for i in range(n)],
                     "kept": ["refined"] * n}
        if self.curves:
            self._write_curve(curve, float(lmbda))
        self._calls += n
        if not self.keep_best:
            return y_opt, z_opt
        both = self.real_loss(codec, torch.cat([x, x]), torch.cat([y0, y_opt]),
                              None if z is None else torch.cat([z0, z_opt]), float(lmbda))
        before, after = both[:n], both[n:]  # one coding call for the original and refined latents
        refined = [a[0] < b[0] for a, b in zip(after, before)]  # a tie keeps the original stream
        self.last.update(real_original=before, real_refined=after,
                         kept=["refined" if r else "original" for r in refined])
        if not any(refined):
            return y, z
        if all(refined):
            return y_opt, z_opt
        pick = torch.tensor(refined, device=y.device)
        mix = lambda new, old: torch.where(pick.view(-1, *([1] * (old.dim() - 1))), new, old)  # noqa: E731
        return mix(y_opt, y), None if z is None else mix(z_opt, z)

    def report(self, i: int = 0) -> Dict[str, Any]:
        """per_image.csv columns of image `i` of the last call: which latents were coded
        (`sga_kept`) and, with keep_best, the real `bpp + lmbda D` of both candidates."""
        if "kept" not in self.last:
            return {}
        row: Dict[str, Any] = {"sga_kept": self.last["kept"][i]}
        if "real_original" in self.last:
            row.update(sga_rd_original=self.last["real_original"][i][0],
                       sga_rd_refined=self.last["real_refined"][i][0])
        return row

    def _optimise(self, codec, x: Tensor, y0: Tensor, z0: Optional[Tensor], lmbda: float
                  ) -> Tuple[Tensor, Optional[Tensor], List[Tuple[int, float, List[float]]]]:
        latents = [y0.clone().requires_grad_(True)]
        if z0 is not None:
            latents.append(z0.clone().requires_grad_(True))
        opt = torch.optim.Adam(latents, lr=self.lr)
        gens = [torch.Generator(device=y0.device).manual_seed(self.seed) for _ in range(y0.size(0))]
        drop_step = None if self.lr_drop_at is None else int(self.lr_drop_at * self.steps)
        curve: List[Tuple[int, float, List[float]]] = []  # (step, tau, relaxed loss per image)
        every = max(1, self.steps // 100)
        for t in self._steps():
            if t == drop_step:
                for g in opt.param_groups:
                    g["lr"] = self.lr * self.lr_drop
            tau = self.tau(t)
            loss, bpp, d = self.relaxed_loss(codec, x, latents[0], latents[1] if z0 is not None else None,
                                             lmbda, tau, gens)
            grads = torch.autograd.grad(loss, latents)  # the networks' .grad stay untouched
            for p, g in zip(latents, grads):
                p.grad = g
            opt.step()
            if t % every == 0 or t == self.steps - 1:
                curve.append((t, tau, (bpp + lmbda * d).detach().tolist()))
        y = latents[0].detach()
        z = latents[1].detach() if z0 is not None else None
        return y, z, curve

    def _write_curve(self, curve, lmbda: float) -> None:
        from pathlib import Path

        path = Path(self.curves)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with path.open("a") as f:
            if new:
                f.write("image,step,tau,loss,lmbda\n")
            f.writelines(f"{self._calls + i},{t},{tau:.6g},{losses[i]:.6g},{lmbda:g}\n"
                         for i in range(len(curve[0][2])) for t, tau, losses in curve)

    def _steps(self):
        if not self.progress:
            return range(self.steps)
        from rich.progress import track

        return track(range(self.steps), description="SGA", transient=True)



class SGAChannel(Channel):
    """The walk's channel of SGA's relaxation (Yang, Bamler, Mandt 2020, eq. 7): z and y rounded
    by Gumbel-annealed sampling at temperature `tau` on the refiner's grid, differentiable; the
    rates are the priors' bin masses at the samples. Context models: the grid from the context
    of the continuous y, the rate from the context of the relaxed y (the parallel training
    context). The decoder's trained transforms run in their decoding form (not training: LPC
    adds its mean), the inference-time ones (the encoder's later choices) do not."""

    mode = "refine"
    inference = False

    def __init__(self, sga: "SGA", quantizer, tau: float, generator: Generators = None):
        super().__init__(quantizer)
        self.sga, self.tau, self.generator = sga, float(tau), generator

    def side(self, bb, z):
        prior = bb.side_prior(z)
        z_tilde = self.sga.relax(z, prior.means, self.tau, self.generator)
        return z_tilde, prior.likelihood(z_tilde)

    def main(self, bb, hyper, y):
        if bb.autoregressive:
            grid = bb.params(hyper, like=y, ctx=bb.context(y)).means.detach() if self.sga.grid == "coder" else None
            y_tilde = self.sga.relax(y, grid, self.tau, self.generator)
            params = bb.params(hyper, like=y, ctx=bb.context(y_tilde))
        else:
            params = bb.params(hyper, like=y)
            y_tilde = self.sga.relax(y, params.means, self.tau, self.generator)
        return y_tilde, params, params.likelihood(y_tilde), {}, {}
