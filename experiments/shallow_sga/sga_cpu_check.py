"""A small CPU check of SGA's gain (Yang, Bamler, Mandt 2020) on a trained codecx checkpoint:
real bitstreams with and without `refine=sga` on centre crops of a few Kodak images.

    OMP_NUM_THREADS=1 python experiments/shallow_sga/sga_cpu_check.py CKPT \
        --images kodim01 kodim05 --crop 256 --steps 300 --tau-offset 30 --tau-rate 1e-2

Prints, per image and on average, bpp of the streams, PSNR of the decoded image, the real
`bpp + lmbda 255^2 MSE`, and encode seconds, plain and with SGA.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codecx.eval.load import load_codec
from codecx.inference.sga import SGA
from codecx.models import Codec

KODAK = Path(__file__).resolve().parents[3] / "shared" / "data" / "kodak"


def crop(name: str, size: int) -> torch.Tensor:
    im = np.asarray(Image.open(KODAK / f"{name}.png").convert("RGB"), dtype="float32") / 255
    x = torch.from_numpy(im).permute(2, 0, 1).unsqueeze(0)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size].contiguous()


def measure(codec: Codec, x: torch.Tensor, lmbda: float):
    t0 = time.perf_counter()
    enc = codec.compress(x)
    t_enc = time.perf_counter() - t0
    x_hat = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"], enc.get("options"))
    x8, xh8 = (x * 255).round(), (x_hat * 255).round()
    mse = torch.mean((x8 - xh8) ** 2).item()
    bpp = 8 * sum(len(s) for s in enc["strings"][0]) / (x.shape[-2] * x.shape[-1])
    return {"bpp": bpp, "psnr": 10 * math.log10(255 ** 2 / mse), "loss": bpp + lmbda * mse, "enc_s": t_enc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--images", nargs="+", default=["kodim01", "kodim05"])
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--tau-offset", type=int, default=30)
    p.add_argument("--tau-rate", type=float, default=1e-2)
    p.add_argument("--out", help="JSON file for the figures")
    a = p.parse_args()
    base, config = load_codec(a.ckpt)
    lmbda = float(config["lmbda"])
    plain = Codec(base.backbone, base.quantizer, lmbda=lmbda).eval()
    sga = SGA(steps=a.steps, lr=a.lr, tau_offset=a.tau_offset, tau_rate=a.tau_rate)
    refined = Codec(base.backbone, base.quantizer, refiners=[sga], lmbda=lmbda).eval()
    rows = []
    for name in a.images:
        x = crop(name, a.crop)
        with torch.no_grad():
            r0, r1 = measure(plain, x, lmbda), measure(refined, x, lmbda)
        rows.append({"image": name, "plain": r0, "sga": r1, "kept": sga.last.get("kept")})
        print(f"{name}: plain bpp {r0['bpp']:.4f} PSNR {r0['psnr']:.2f} loss {r0['loss']:.3f} "
              f"({r0['enc_s']:.1f} s) | SGA bpp {r1['bpp']:.4f} PSNR {r1['psnr']:.2f} "
              f"loss {r1['loss']:.3f} ({r1['enc_s']:.1f} s, {sga.last.get('kept')})", flush=True)
    mean = lambda k, f: sum(r[k][f] for r in rows) / len(rows)  # noqa: E731
    summary = {k: {f: mean(k, f) for f in ("bpp", "psnr", "loss", "enc_s")} for k in ("plain", "sga")}
    print(json.dumps({"lmbda": lmbda, "crop": a.crop, "steps": a.steps, "mean": summary}, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps({"setup": vars(a), "lmbda": lmbda, "rows": rows,
                                           "mean": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
