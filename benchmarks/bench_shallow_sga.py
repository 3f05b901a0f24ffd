"""Shallow decoder and SGA (arXiv 2304.06244): synthesis time against mbt_mean's, SGA encode cost.

What is compared (issue 12):

- **shallow_gs** / **jpeg_like_gs**: the two-layer synthesis (C=320, 12 hidden, residual) and
  the JPEG-like ConvT(320->3, k18, s16) against Minnen 2018's `g_s` (mbt_mean N=192, M=320) on
  the same random latent of a Kodak-sized image (`--sga-size`; 768x512 -> 32x48x320), random
  weights (the time does not depend on them). Paired timing: each round runs the variants
  back to back (order alternating), each time is divided by mbt_mean's of the same round; the
  ratio is the median. Target: the shallow decoder is faster by at least the order of the
  KMACs ratio (93.7 / 5.33 = 17.6), i.e. a time ratio <= 0.1. KMACs/px from
  codecx.metrics.complexity are reported alongside.
- **sga_encode_per_100_steps**: `Codec.compress` with `refine=sga` (100 steps per image,
  keep_best on) against a plain `compress` of the same image and codec (the benchmarks'
  trained mbt_mean of `benchmarks/_trained.py`, `--sga-ckpt random` for random weights).
  Informational (no target): SGA spends encoder time by design; the paper quotes 53.9 s vs
  0.22 s per Kodak image (scale hyperprior, 2000 steps, GPU).
"""
from __future__ import annotations

import statistics
from typing import List

from benchmarks import Row, timed, torch_device
from benchmarks._images import kodak_images
from benchmarks._trained import trained_checkpoint

DEFAULTS = {"rounds": 5, "sga_steps": 100, "crop": 256}
QUICK = {"rounds": 1, "sga_steps": 5, "crop": 64}
GS_TARGET = 0.1


def add_arguments(group) -> None:
    group.add_argument("--sga-size", type=int, nargs=2, default=[512, 768], metavar=("H", "W"),
                       help="shallow_sga: image size of the synthesis timing (default 512 768; --quick 128 128)")
    group.add_argument("--sga-ckpt", default="trained", help="shallow_sga: checkpoint of the SGA "
                       "timing ('trained': benchmarks/_trained.py's mbt_mean 64/96; 'random')")
    group.add_argument("--sga-crop", type=int, default=None, help="shallow_sga: Kodak crop of the SGA "
                       "timing (default 256; --quick 64)")


def _synthesis_rows(args, device, rounds) -> List[Row]:
    import torch
    from compressai.models import MeanScaleHyperprior

    from codecx.metrics.complexity import kmacs_per_pixel
    from codecx.models.shallow import JpegLike, JpegLikeSynthesis, Shallow, TwoLayerSynthesis

    h, w = (128, 128) if args.quick else args.sga_size
    torch.manual_seed(args.seed)
    variants = {"mbt_mean": MeanScaleHyperprior(192, 320).g_s, "shallow": TwoLayerSynthesis(320),
                "jpeg_like": JpegLikeSynthesis(320)}
    variants = {k: m.to(device).eval() for k, m in variants.items()}
    y = torch.randn(1, 320, h // 16, w // 16, device=device)
    times = {k: [] for k in variants}
    with torch.no_grad():
        for m in variants.values():  # warm-up
            m(y)
        names = list(variants)
        for r in range(rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                times[k].append(timed(lambda: variants[k](y), device))
    kmacs = {"mbt_mean": 93.696,  # Minnen 2018 g_s at N=192, M=320 (codecx complexity mbt_mean)
             "shallow": kmacs_per_pixel(Shallow(N=8, M=320, analysis="cnn"), 64, 64)["g_s"],
             "jpeg_like": kmacs_per_pixel(JpegLike(N=8, M=320, analysis="cnn"), 64, 64)["g_s"]}
    rows = [Row("mbt_mean_gs_s", statistics.median(times["mbt_mean"]), None, "s",
                f"Minnen 2018 g_s, latent 320x{h // 16}x{w // 16}")]
    for k in ("shallow", "jpeg_like"):
        ratio = statistics.median(a / b for a, b in zip(times[k], times["mbt_mean"]))
        rows.append(Row(f"{k}_gs_time", ratio, GS_TARGET if k == "shallow" else None, "ratio",
                        f"vs mbt_mean g_s, median of paired ratios; KMACs ratio {kmacs[k] / kmacs['mbt_mean']:.3f}"))
        rows.append(Row(f"{k}_gs_kmacs", kmacs[k], None, "KMACs/px", "codecx.metrics.complexity"))
    return rows


def _sga_rows(args, device, rounds, steps) -> List[Row]:
    import torch

    from codecx.inference.sga import SGA
    from codecx.models import Codec, build_backbone
    from codecx.models.build import load_weights
    from codecx.quantizers import NoiseQuantizer

    crop = args.sga_crop or (QUICK if args.quick else DEFAULTS)["crop"]
    torch.manual_seed(args.seed)
    bb = build_backbone("mbt_mean", 64, 96)
    if args.sga_ckpt != "random":
        path = args.sga_ckpt
        if path == "trained":
            path = trained_checkpoint(N=64, M=96, quick=args.quick, threads=args.threads)
        load_weights(bb, str(path))
    plain = Codec(bb, NoiseQuantizer(), lmbda=0.0067).to(device).eval()
    plain.update(force=True)
    refined = Codec(bb, NoiseQuantizer(), refiners=[SGA(steps=steps)], lmbda=0.0067).to(device).eval()
    x = kodak_images(1, crop)[0].to(device)
    t_plain, t_sga = [], []
    with torch.no_grad():
        plain.compress(x)  # warm-up
        for _ in range(rounds):
            t_plain.append(timed(lambda: plain.compress(x), device))
            t_sga.append(timed(lambda: refined.compress(x), device))
    per100 = [s * 100 / steps for s in t_sga]
    return [Row("plain_encode_s", statistics.median(t_plain), None, "s", f"{crop}-px Kodak crop"),
            Row("sga_encode_s_per_100_steps", statistics.median(per100), None, "s",
                f"compress with SGA, {steps} steps, scaled to 100"),
            Row("sga_encode_per_100_steps", statistics.median(a / b for a, b in zip(per100, t_plain)),
                None, "ratio", "vs plain compress, same image")]


def run(args) -> List[Row]:
    import torch

    defaults = QUICK if args.quick else DEFAULTS
    rounds = args.rounds or defaults["rounds"]
    device = torch_device(args)
    print(f"shallow_sga: {rounds} round(s), device={device}, threads={torch.get_num_threads()}", flush=True)
    rows = _synthesis_rows(args, device, rounds)
    rows += _sga_rows(args, device, max(1, rounds // 2), args.steps or defaults["sga_steps"])
    return rows
