"""The ILLM study's discriminator task in isolation (issue 28 item 4, third round): can a D tell
real 64-px tiles from the stage-1 codec's reconstructions of them? (MS-ILLM, arXiv 2301.11189;
HiFiC's PatchGAN, arXiv 2006.09965.)

Training pool: 4 random 64-px tiles of each of the 200 BSDS500 training images and their
reconstructions by `runs/illm2/stage1` (eval mode, cached once); held out: 8 tiles of each of the
24 Kodak images. D is trained alone, binary (OASIS loss with one label class: P(fake) =
softmax[0]), batch 8 real + 8 fake, AdamW betas (0.5, 0.9), wd 0, gradient clipped at 1.0 (the
study's D phase), `paired`: the fakes are the reconstructions of the same 8 tiles (HiFiC's
pairing, `reg.mc_sampling=false`), else of 8 other tiles (MS-ILLM's released `mc_sampling`).
One line per variant: training accuracy (last 50 steps) and held-out accuracy.

    python experiments/illm/d_harness.py unet6_lr1e-3 unet4_paired_lr4e-4 ...   # names: VARIANTS
"""
from __future__ import annotations

import glob
import os
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image

from codecx.eval.load import load_codec
from codecx.regularizers.gan import PatchGANDiscriminator, UNetDiscriminator, oasis_d_loss

CACHE = os.environ.get("D_HARNESS_CACHE", "/tmp/illm_d_harness_pool.pt")
M = 96  # the stage-1 codec's latent channels
U6, U4 = (32, 32, 64, 64, 128, 128), (32, 64, 128, 128)


def pool(ckpt="runs/illm2/stage1/checkpoints/last.ckpt", train="../shared/data/train/bsds500/train",
         kodak="../shared/data/kodak"):
    """{xt, xht, yt, xv, xhv, yv}: training / held-out tiles, their reconstructions and y_hat."""
    if os.path.exists(CACHE):
        return torch.load(CACHE)
    codec, _ = load_codec(ckpt)
    codec.eval()
    g = torch.Generator().manual_seed(0)

    def tiles(files, n):
        out = []
        for f in files:
            im = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
            h, w = im.shape[1:]
            for _ in range(n):
                i, j = (int(torch.randint(s - 64, (1,), generator=g)) for s in (h, w))
                out.append(im[:, i:i + 64, j:j + 64])
        return torch.stack(out)

    @torch.no_grad()
    def rec(x):
        o = [codec(x[i:i + 32]) for i in range(0, len(x), 32)]
        return torch.cat([a.x_hat.clamp(0, 1) for a in o]), torch.cat([a.y_hat for a in o])

    xt, xv = tiles(sorted(glob.glob(f"{train}/*.jpg")), 4), tiles(sorted(glob.glob(f"{kodak}/*.png")), 8)
    (xht, yt), (xhv, yv) = rec(xt), rec(xv)
    P = dict(xt=xt, xht=xht, yt=yt, xv=xv, xhv=xhv, yv=yv)
    torch.save(P, CACHE)
    return P


class _Binary(torch.nn.Module):
    """A one-logit D (PatchGAN) as two classes (fake, real) whose softmax is its sigmoid."""

    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x, y):
        v = self.d(x, y)
        return torch.cat([-v / 2, v / 2], 1)


def build(kind: str, widths=U6, init: str = "default", classes: int = 2) -> torch.nn.Module:
    """codecx's U-Net D (`kind` unet; NC's with `norm` batch / spectral) or the PatchGAN (patchgan,
    patchgan_nosn), two classes."""
    if kind == "unet":
        d = UNetDiscriminator(M, classes, widths, 16, 8, 32)
        if init.startswith("kaiming"):  # He normal for LeakyReLU 0.2, zero biases
            for m in d.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, a=0.2)
                    torch.nn.init.zeros_(m.bias)
            if init == "kaiming_zero_residual":  # each residual body's last conv zero (Fixup-like)
                for b in [*d.down, *d.up]:
                    torch.nn.init.zeros_([m for m in b.body if isinstance(m, torch.nn.Conv2d)][-1].weight)
        return d
    if kind in ("nc_batch", "nc_spectral"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import neuralcompression.models as ncm
        return ncm.ConditionalUnetDiscriminator(2, 8, context_in=M, context_out=16, chans=[19, *widths],
                                                norm_type=kind[3:])
    if kind == "patchgan_nosn":
        from codecx.regularizers import gan

        sn, gan.spectral_norm = gan.spectral_norm, (lambda m: m)
        try:
            return _Binary(PatchGANDiscriminator(M, (32, 64, 128, 256)))
        finally:
            gan.spectral_norm = sn
    return _Binary(PatchGANDiscriminator(M, (32, 64, 128, 256)))


def run(P, name, kind="unet", widths=U6, init="default", lr=1e-3, paired=False, steps=250, one_call=False,
        labeler=None):
    """`labeler`: the OASIS form, C + 1 classes with the labeler's codes u(x) as the real labels."""
    u = None
    if labeler:
        from codecx.regularizers.labeler import load_labeler

        lab = load_labeler(labeler)
        with torch.no_grad():
            u = torch.cat([lab.labels(P["xt"][i:i + 64]) for i in range(0, len(P["xt"]), 64)])
    torch.manual_seed(1)
    D = build(kind, widths, init, 2 if u is None else lab.codebook_size + 1)
    opt = torch.optim.AdamW(D.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0)
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(8, 8, 8, dtype=torch.long)
    t, hist = time.time(), []
    for _ in range(steps):
        idx = torch.randint(len(P["xt"]), (16,), generator=g)
        f, r = (idx[:8], idx[:8]) if paired else (idx[:8], idx[8:])
        if one_call:  # batch norm: reals and fakes normalised together
            rl, fl = D(torch.cat([P["xt"][r], P["xht"][f]]), torch.cat([P["yt"][r], P["yt"][f]])).chunk(2)
        else:
            rl, fl = D(P["xt"][r], P["yt"][r]), D(P["xht"][f], P["yt"][f])
        loss = oasis_d_loss(rl, fl, labels if u is None else u[r])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(D.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            acc = 0.5 * ((rl.softmax(1)[:, 0] < .5).float().mean() + (fl.softmax(1)[:, 0] > .5).float().mean())
        hist.append((loss.item(), acc.item()))
    D.eval()
    with torch.no_grad():
        pr, pf = D(P["xv"], P["yv"]).softmax(1)[:, 0], D(P["xhv"], P["yv"]).softmax(1)[:, 0]
    held = 0.5 * ((pr < .5).float().mean() + (pf > .5).float().mean())
    h = np.array(hist)
    print(f"| {name} | {h[-50:, 0].mean():.3f} | {h[-50:, 1].mean():.3f} | {held:.3f} | "
          f"{pr.mean():.3f} / {pf.mean():.3f} | {time.time() - t:.0f} |", flush=True)


VARIANTS = {
    "unet6_lr1e-3": dict(),  # the second round's D
    "unet6_kaiming_lr4e-4": dict(init="kaiming", lr=4e-4),
    "unet6_kaiming_zero_residual_lr4e-4": dict(init="kaiming_zero_residual", lr=4e-4),
    "unet6_kaiming_zero_residual_lr1e-3": dict(init="kaiming_zero_residual"),
    "unet6_batchnorm_one_call": dict(kind="nc_batch", one_call=True),
    "patchgan_lr2.5e-4": dict(kind="patchgan", lr=2.5e-4),
    "patchgan_paired_lr2.5e-4": dict(kind="patchgan", lr=2.5e-4, paired=True),
    "patchgan_nosn_paired_lr2.5e-4": dict(kind="patchgan_nosn", lr=2.5e-4, paired=True),
    "unet6_paired_lr1e-4": dict(lr=1e-4, paired=True),
    "unet6_kaiming_paired_lr4e-4": dict(init="kaiming", lr=4e-4, paired=True),
    "unet6_kaiming_paired_lr1e-4": dict(init="kaiming", lr=1e-4, paired=True),
    "unet6_spectral_paired_lr1e-3": dict(kind="nc_spectral", paired=True),
    "unet4_paired_lr1e-3": dict(widths=U4, paired=True),
    "unet4_paired_lr4e-4": dict(widths=U4, lr=4e-4, paired=True),
    "unet4_paired_lr4e-4_500": dict(widths=U4, lr=4e-4, paired=True, steps=500),
    "unet4_lr4e-4_500": dict(widths=U4, lr=4e-4, steps=500),
    "unet4_paired_lr4e-4_500_labels": dict(widths=U4, lr=4e-4, paired=True, steps=500, labeler="runs/illm2/labeler.pt"),
}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    P = pool()
    print("| variant | train loss | train acc | held-out acc | P(fake) real / fake | s |\n|---|---|---|---|---|---|")
    for n in names:
        run(P, n, **VARIANTS[n])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
