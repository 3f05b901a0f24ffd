"""A mean-scale hyperprior trained by CompressAI's own code, not codecx's (a second, independent model).

`compressai_checkpoint()` trains `compressai.models.MeanScaleHyperprior` with a plain PyTorch
loop in the style of CompressAI's `examples/train.py` (its `forward`: additive uniform noise,
`lmbda * 255^2 * MSE + bpp`, a separate Adam on the entropy bottleneck's quantiles) on random
crops of BSDS500's training photos, and saves its state dict to `runs/bench/`. Nothing is
downloaded; codecx loads the file with `model.weights` (`codecx.models.build.load_weights`).
Its recipe differs from `benchmarks/_trained.py` on purpose (other code, lmbda, learning rate,
crops), so that figures measured on both do not share one training's quirks.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from benchmarks._trained import ROOT, RUNS, TRAIN_DATA

STEPS, QUICK_STEPS = 400, 10
LMBDA = 0.013  # the zoo's highest lambda: larger scales than the codecx model's 0.0067


def compressai_checkpoint(*, N: int = 64, M: int = 96, steps: Optional[int] = None, quick: bool = False,
                          crop: int = 128, batch: int = 8, lmbda: float = LMBDA, seed: int = 0) -> Path:
    """`runs/bench/compressai_msh_N{N}_M{M}_{steps}steps.pt`: a CompressAI MeanScaleHyperprior
    state dict trained `steps` steps (400; 10 with `quick`) now, unless the file exists."""
    steps = int(steps or (QUICK_STEPS if quick else STEPS))
    path = RUNS / f"compressai_msh_N{N}_M{M}_lmbda{lmbda:g}_{steps}steps.pt"
    if path.is_file():
        return path
    import numpy as np
    import torch
    from compressai.models import MeanScaleHyperprior
    from PIL import Image

    folder = TRAIN_DATA / "bsds500" / "train"  # experiment=cpu_study's 200 training photos
    photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not photos:
        raise FileNotFoundError(f"{folder}: no training photos for the CompressAI model")
    print(f"training CompressAI's MeanScaleHyperprior(N={N}, M={M}) once, {steps} steps at "
          f"lmbda={lmbda} on {len(photos)} photos -> {path.relative_to(ROOT)}", flush=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype="float32") / 255).permute(2, 0, 1)
              for p in photos]
    net = MeanScaleHyperprior(N=N, M=M)
    main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(main, lr=1e-3), torch.optim.Adam(aux, lr=1e-3)
    net.train()
    for step in range(steps):
        batch_x = []
        for _ in range(batch):
            im = images[rng.randrange(len(images))]
            top, left = rng.randrange(im.shape[1] - crop + 1), rng.randrange(im.shape[2] - crop + 1)
            batch_x.append(im[:, top : top + crop, left : left + crop])
        x = torch.stack(batch_x)
        out = net(x)
        bpp = sum(torch.log(lik).sum() for lik in out["likelihoods"].values()) / (-np.log(2) * x.numel() / 3)
        loss = lmbda * 255**2 * torch.mean((out["x_hat"] - x) ** 2) + bpp
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        opt.step()
        aux_opt.zero_grad()
        net.aux_loss().backward()
        aux_opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f}, bpp {bpp.item():.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return path
