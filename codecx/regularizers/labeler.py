"""The MS-ILLM labeler u(x): a VQ-VAE whose code indices at 1/8 resolution label the pixels
the U-Net discriminator classifies (Muckley et al., ICML 2023, sec. 4 and appendix A.2).

Architecture (METHODS.md, "Labeler"; as released in NeuralCompression): a VQGAN-style encoder
and decoder (Esser et al. 2021) with ChannelNorm instead of GroupNorm, swish, two residual
blocks per level at channel multipliers (1, 2, 2, 4) of `ch` = 64, cross-covariance (XCiT,
El-Nouby et al. 2021) attention at 1/8 resolution, a 256-dim embedding projected to 8 dims by
a 1x1 conv, L2-normalised latents and an L2-normalised codebook of 1024 codes. Loss (eq. 10):
`MSE + LPIPS-VGG + codebook + beta * commitment`, beta = 0.25 (VQGAN's; not published).

Train one with `codecx train-labeler --data DIR --out labeler.pt --lpips-weights vgg16-397923af.pth`
(or `python -m codecx.regularizers.labeler ...`); `reg.labeler=labeler.pt` loads it, frozen.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecx.models.hific import ChannelNorm2d

__all__ = ["VQLabeler", "XCA", "load_labeler", "labeler_from_nc", "is_nc_labeler_state", "train_labeler", "main"]


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class _ResBlock(nn.Module):
    """VQGAN residual block (norm, swish, conv3x3, norm, swish, conv3x3) with ChannelNorm."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = ChannelNorm2d(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        return self.skip(x) + self.conv2(_swish(self.norm2(h)))


class XCA(nn.Module):
    """Cross-covariance attention of XCiT (El-Nouby et al., NeurIPS 2021): attention between
    channels, `softmax(tau * q_hat^T k_hat)` with q, k L2-normalised over the tokens, so the
    cost is linear in the number of pixels (any image size)."""

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"XCA: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, c = tokens.shape
        qkv = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, c/heads, n)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj(out)


class _Attn(nn.Module):
    """ChannelNorm then XCA over the pixels as tokens, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.xca = ChannelNorm2d(ch), XCA(ch)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.xca(t).transpose(1, 2).reshape(b, c, h, w)


class _Down(nn.Module):
    """conv3x3 stride 2 with VQGAN's asymmetric (right/bottom) zero padding."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int) -> nn.Sequential:
    return nn.Sequential(_ResBlock(ch, ch), _Attn(ch), _ResBlock(ch, ch))


class VQLabeler(nn.Module):
    """The VQ-VAE labeler u(x) of MS-ILLM (see the module docstring).

    `ch`, `ch_mult`, `num_res_blocks`: VQGAN widths (64, (1,2,2,4), 2); the image is
    downsampled 2^(len(ch_mult)-1) = 8 times and attention runs at that resolution.
    `embed_dim` 256 -> `code_dim` 8 (1x1 conv), `codebook_size` 1024, commitment `beta` 0.25.
    """

    def __init__(self, ch: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 2,
                 embed_dim: int = 256, code_dim: int = 8, codebook_size: int = 1024, beta: float = 0.25):
        super().__init__()
        self.config = dict(ch=int(ch), ch_mult=[int(m) for m in ch_mult], num_res_blocks=int(num_res_blocks),
                           embed_dim=int(embed_dim), code_dim=int(code_dim),
                           codebook_size=int(codebook_size), beta=float(beta))
        mult, nres = self.config["ch_mult"], self.config["num_res_blocks"]
        self.factor = 2 ** (len(mult) - 1)
        self.codebook_size, self.beta = int(codebook_size), float(beta)
        # encoder
        enc = [nn.Conv2d(3, ch, 3, padding=1)]
        cin = ch
        for i, m in enumerate(mult):
            for _ in range(nres):
                enc.append(_ResBlock(cin, ch * m))
                cin = ch * m
                if i == len(mult) - 1:
                    enc.append(_Attn(cin))  # at 1/8
            if i != len(mult) - 1:
                enc.append(_Down(cin))
        enc += [_mid(cin), ChannelNorm2d(cin)]
        self.encoder = nn.Sequential(*enc)
        self.conv_out = nn.Conv2d(cin, embed_dim, 3, padding=1)
        # bottleneck: project to code_dim, L2-normalised codebook, project back
        self.project = nn.Conv2d(embed_dim, code_dim, 1)
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim))
        self.unproject = nn.Conv2d(code_dim, embed_dim, 1)
        # decoder
        dec = [nn.Conv2d(embed_dim, cin, 3, padding=1), _mid(cin)]
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(nres + 1):
                dec.append(_ResBlock(cin, ch * m))
                cin = ch * m
                if i == len(mult) - 1:
                    dec.append(_Attn(cin))
            if i != 0:
                dec.append(_Up(cin))
        dec += [ChannelNorm2d(cin)]
        self.decoder = nn.Sequential(*dec)
        self.conv_rgb = nn.Conv2d(cin, 3, 3, padding=1)

    # ------------------------------------------------------------------ pieces
    def encode(self, x: Tensor) -> Tensor:
        """L2-normalised continuous latents (B, code_dim, H/8, W/8)."""
        h = self.conv_out(_swish(self.encoder(x)))
        return F.normalize(self.project(h), dim=1)

    def codes(self) -> Tensor:
        return F.normalize(self.codebook, dim=1)

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest (unit) code at each position: argmax of the cosine."""
        return torch.einsum("bchw,kc->bkhw", z, self.codes()).argmax(dim=1)

    def quantize(self, z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(straight-through z_q, indices, codebook loss, commitment loss) (van den Oord et al. 2017)."""
        idx = self.nearest(z)
        e = self.codes()[idx].permute(0, 3, 1, 2)
        codebook = F.mse_loss(e, z.detach())
        commitment = F.mse_loss(z, e.detach())
        return z + (e - z).detach(), idx, codebook, commitment

    def decode(self, z_q: Tensor) -> Tensor:
        h = self.decoder(self.unproject(z_q))
        return self.conv_rgb(_swish(h))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        z = self.encode(x)
        z_q, idx, codebook, commitment = self.quantize(z)
        return {"x_hat": self.decode(z_q), "indices": idx, "codebook": codebook, "commitment": commitment,
                "z": z}

    def loss(self, x: Tensor, lpips: Optional[nn.Module] = None,
             out: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Eq. 10 of MS-ILLM: `MSE + LPIPS-VGG + codebook + beta * commitment` (`out`: `self(x)`
        when the caller already ran it)."""
        out = self(x) if out is None else out
        mse = F.mse_loss(out["x_hat"], x)
        lp = lpips(x, out["x_hat"]) if lpips is not None else x.new_zeros(())
        total = mse + lp + out["codebook"] + self.beta * out["commitment"]
        used = out["indices"].unique().numel()
        return total, {"loss": total.detach(), "mse": mse.detach(), "lpips": lp.detach(),
                       "codebook": out["codebook"].detach(), "commitment": out["commitment"].detach(),
                       "codes_used": torch.tensor(float(used))}

    @torch.no_grad()
    def restart_dead_codes(self, z: Tensor, indices: Tensor, idle: Tensor, after: int,
                           generator: Optional[torch.Generator] = None) -> int:
        """Dead-code restart (Dhariwal et al. 2020, Jukebox; not in MS-ILLM): `idle` counts, per
        code, the steps since it was last used; codes idle for `after` steps are replaced by
        latents `z` (B, code_dim, H, W) of the current batch drawn at random. Small CPU-scale
        labelers otherwise collapse to a few codes. Returns the number of codes replaced."""
        used = torch.bincount(indices.flatten(), minlength=self.codebook_size) > 0
        idle.add_(1).masked_fill_(used, 0)
        dead = (idle >= int(after)).nonzero().flatten()
        if dead.numel():
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.size(1))
            pick = torch.randint(flat.size(0), (dead.numel(),), generator=generator)
            self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
            idle[dead] = 0
        return int(dead.numel())

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        """u(x): the code index of each 8x8 block of `x` (B, H/8, W/8), long. Run in eval mode
        under no_grad (the labeler is frozen); `x` in [0, 1] with sides multiple of 8."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"labeler: image sides {tuple(x.shape[-2:])} must be multiples of {self.factor}")
        was = self.training
        self.eval()
        try:
            return self.nearest(self.encode(x))
        finally:
            self.train(was)

    def save(self, path) -> None:
        """Write `{"config", "state_dict"}`; `load_labeler(path)` rebuilds the same labeler."""
        torch.save({"codecx_labeler": 1, "config": self.config, "state_dict": self.state_dict()}, path)


# --------------------------------------------------------------------------- NeuralCompression layout
#: bookkeeping buffers of NeuralCompression's VQBottleneck (codebook hit counts), not part of u(x)
_NC_VQ_STATS = ("codebook_hits_0", "perplexities", "max_hits", "percentage_hits")


def is_nc_labeler_state(state) -> bool:
    """True for a NeuralCompression `VqVaeXCiTAutoencoder` state dict with its ProjectLatent /
    NormalizeLatent / VQBottleneck bottleneck (the released `vqvae_xcit_p8_ch64_cb1024_h8.ckpt`)."""
    return isinstance(state, dict) and "encoder.conv_in.weight" in state and \
        "bottleneck_op.child.child.codebooks.0" in state


def _nc_key_pairs(levels: int, nres: int):
    """(NC prefix, codecx prefix) of every VQLabeler submodule, in VQLabeler's build order."""
    pairs, k = [("encoder.conv_in.", "encoder.0.")], 1
    for i in range(levels):
        for j in range(nres):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.{k}."))
            k += 1
            if i == levels - 1:
                pairs.append((f"encoder.down.{i}.attn.{j}.", f"encoder.{k}."))
                k += 1
        if i != levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.{k}."))
            k += 1
    pairs += [("encoder.mid.", f"encoder.{k}."), ("encoder.norm_out.", f"encoder.{k + 1}."),
              ("encoder.conv_out.", "conv_out."), ("bottleneck_op.input_conv.", "project."),
              ("bottleneck_op.output_conv.", "unproject."), ("decoder.conv_in.", "decoder.0."),
              ("decoder.mid.", "decoder.1.")]
    k = 2
    for i in reversed(range(levels)):
        for j in range(nres + 1):
            pairs.append((f"decoder.up.{i}.block.{j}.", f"decoder.{k}."))
            k += 1
            if i == levels - 1:
                pairs.append((f"decoder.up.{i}.attn.{j}.", f"decoder.{k}."))
                k += 1
        if i != 0:
            pairs.append((f"decoder.up.{i}.upsample.", f"decoder.{k}."))
            k += 1
    return pairs + [("decoder.norm_out.", f"decoder.{k}."), ("decoder.conv_out.", "conv_rgb.")]


def labeler_from_nc(state) -> Tuple[Dict, Dict[str, Tensor]]:
    """(VQLabeler config, state dict) of a NeuralCompression VQ-VAE labeler state dict
    (`is_nc_labeler_state`): widths read from the tensors, keys mapped, its codebook hit
    statistics dropped. ValueError for a layout VQLabeler does not have (GroupNorm, attention
    elsewhere than at the lowest resolution)."""
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    nres = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    ch = int(state["encoder.conv_in.weight"].shape[0])
    attn = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.") and ".attn." in k})
    if "encoder.norm_out.gamma" not in state or attn != [levels - 1]:
        raise ValueError("a NeuralCompression VQ-VAE with another layout (VQLabeler needs norm_type="
                         "'channel' and attention only at the lowest resolution, as released)")
    config = dict(ch=ch, num_res_blocks=nres,
                  ch_mult=[int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch
                           for i in range(levels)],
                  embed_dim=int(state["encoder.conv_out.weight"].shape[0]),
                  code_dim=int(state["bottleneck_op.input_conv.weight"].shape[0]),
                  codebook_size=int(state["bottleneck_op.child.child.codebooks.0"].shape[0]))
    pairs = _nc_key_pairs(levels, nres)
    out = {"codebook": state["bottleneck_op.child.child.codebooks.0"]}
    for key, v in state.items():
        if key.startswith("bottleneck_op.child.child."):
            continue  # the codebook (above) and _NC_VQ_STATS
        src, dst = next(((s, d) for s, d in pairs if key.startswith(s)), (None, None))
        if src is None:
            raise ValueError(f"a NeuralCompression VQ-VAE key VQLabeler has no place for: {key}")
        out[dst + key[len(src):].replace("nin_shortcut.", "skip.")] = v
    return config, out


def load_labeler(path, option: str = "reg.labeler") -> VQLabeler:
    """A frozen, eval-mode labeler from a file written by `VQLabeler.save` (train-labeler), or
    a NeuralCompression `VqVaeXCiTAutoencoder` state dict (MS-ILLM's released labeler
    `vqvae_xcit_p8_ch64_cb1024_h8.ckpt`; `labeler_from_nc`)."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{option}={path}: no such labeler file. Train one first: codecx train-labeler "
            f"--data DIR --out {p.name} [--lpips-weights vgg16-397923af.pth] (nothing is downloaded)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        config, state = labeler_from_nc(obj) if is_nc_labeler_state(obj) else (obj["config"], obj["state_dict"])
        model = VQLabeler(**config)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any unreadable or foreign file
        raise ValueError(f"{option}={path}: not a labeler written by codecx train-labeler nor a "
                         f"NeuralCompression VqVaeXCiTAutoencoder state dict ({e})") from e
    model.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------- training entry
#: the labeler's learning-rate shapes (codecx.lit.schedule.step_scheduler)
LABELER_SCHEDULES = ("quarter_cosine", "cosine")


def labeler_lr_schedule(opt, steps: int, warmup_steps: Optional[int] = None,
                        scheduler: str = "quarter_cosine"):
    """The labeler's per-step LR schedule: the autoencoder's (MS-ILLM arXiv:2306.01129, A.2:
    "the same learning rate schedule as for the autoencoder pretraining"), a linear ramp over
    `warmup_steps` (None: 1% of `steps`, the autoencoder's 10k of 1M) then the released quarter
    cosine (`scheduler="cosine"`: a half cosine to 0 at `steps`)."""
    from codecx.lit.schedule import step_scheduler

    if scheduler not in LABELER_SCHEDULES:
        raise ValueError(f"--schedule {scheduler}: choose one of {', '.join(LABELER_SCHEDULES)}")
    warm = max(1, int(steps) // 100) if warmup_steps is None else int(warmup_steps)
    if warm < 0:
        raise ValueError(f"--warmup-steps {warmup_steps}: must be >= 0")
    return step_scheduler(opt, scheduler, int(steps), warmup_steps=warm)["scheduler"]


def train_labeler(data: str, out: str, steps: int = 1000, batch_size: int = 8, crop_size: int = 256,
                  lr: float = 3e-4, weight_decay: float = 5e-5, warmup_steps: Optional[int] = None,
                  schedule: str = "quarter_cosine",
                  lpips_weights: Optional[str] = None, no_lpips: bool = False, seed: int = 1,
                  log_every: int = 50, restart_dead: int = 0, **arch) -> Dict[str, float]:
    """Train a labeler on the images under `data` (random crops, flips) and save it to `out`.

    AdamW 3e-4, wd 5e-5, on the autoencoder's schedule (`labeler_lr_schedule`: a ramp over 1%
    of the steps, then MS-ILLM's released quarter cosine), clip 1.0.
    LPIPS-VGG needs the torchvision VGG16 file (`lpips_weights`); `no_lpips` drops the term
    (the paper found LPIPS critical: only for smoke tests). `restart_dead` > 0: codes unused for
    that many steps restart at latents of the batch (`VQLabeler.restart_dead_codes`; 0: off, as
    in MS-ILLM). Returns the last step's metrics.
    """
    from torch.utils.data import DataLoader

    from codecx.data.datamodule import ImageFolderDataset
    from codecx.losses.distortion import LPIPSLoss

    torch.manual_seed(seed)
    lpips = None if no_lpips else LPIPSLoss("vgg", lpips_weights, option="--lpips-weights")
    model = VQLabeler(**arch)
    if crop_size % model.factor:
        raise ValueError(f"--crop-size {crop_size}: must be a multiple of {model.factor}")
    ds = ImageFolderDataset(data, crop_size=crop_size, train=True, name="--data")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=len(ds) >= batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = labeler_lr_schedule(opt, steps, warmup_steps, schedule)
    step, metrics = 0, {}
    idle = torch.zeros(model.codebook_size, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    while step < steps:
        for x in loader:
            fwd = model(x)
            loss, m = model.loss(x, lpips, out=fwd)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if restart_dead > 0:
                model.restart_dead_codes(fwd["z"], fwd["indices"], idle, restart_dead, gen)
            metrics = {k: float(v) for k, v in m.items()}
            if log_every and (step % log_every == 0 or step == steps):
                print(f"labeler step {step}/{steps}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                      flush=True)
            if step >= steps:
                break
    Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    model.save(Path(out).expanduser())
    print(f"codecx: labeler saved to {out}")
    return metrics


def main(argv=None) -> int:
    """`codecx train-labeler` / `python -m codecx.regularizers.labeler`."""
    ap = argparse.ArgumentParser(prog="codecx train-labeler",
                                 description="Train the MS-ILLM VQ-VAE labeler u(x) and save it (reg.labeler=PATH).")
    ap.add_argument("--data", required=True, help="folder of training images")
    ap.add_argument("--out", required=True, help="labeler file to write")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="linear LR ramp (default: 1%% of --steps, the autoencoder's 10k of 1M)")
    ap.add_argument("--schedule", choices=LABELER_SCHEDULES, default="quarter_cosine",
                    help="after the ramp: MS-ILLM's released quarter cosine (default) or a half cosine to 0")
    ap.add_argument("--lpips-weights", default=None,
                    help="torchvision VGG16 file vgg16-397923af.pth (or its folder; default: the torch hub cache)")
    ap.add_argument("--no-lpips", action="store_true", help="MSE + VQ terms only (smoke tests)")
    ap.add_argument("--ch", type=int, default=64)
    ap.add_argument("--ch-mult", type=int, nargs="+", default=[1, 2, 2, 4])
    ap.add_argument("--num-res-blocks", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--code-dim", type=int, default=8)
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50, help="print the losses every N steps")
    ap.add_argument("--restart-dead", type=int, default=0,
                    help="restart codes unused for N steps at latents of the batch (0: off, as in MS-ILLM)")
    a = ap.parse_args(argv)
    try:
        train_labeler(a.data, a.out, steps=a.steps, batch_size=a.batch_size, crop_size=a.crop_size,
                      lr=a.lr, warmup_steps=a.warmup_steps, schedule=a.schedule, lpips_weights=a.lpips_weights,
                      no_lpips=a.no_lpips, seed=a.seed, log_every=a.log_every, restart_dead=a.restart_dead,
                      ch=a.ch, ch_mult=a.ch_mult,
                      num_res_blocks=a.num_res_blocks, embed_dim=a.embed_dim, code_dim=a.code_dim,
                      codebook_size=a.codebook_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"codecx train-labeler: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
