"""Latent compensation (Rethinking Latent Variable, WACV 2026): decode time with lrp / lpc / fpc against no
transform; bits.

What is compared (issue 13): `Codec.decompress` of the same codecx streams by `mbt_mean`
(N=128, M=192, random weights: the time does not depend on them) with no transform, `LRP`,
`LPC` learned (per-channel), `LPC` predicted and `FPC`, on a Kodak image (full 768x512; `--quick`
a 128-px crop). The transforms' weights are randomised (not the zero initialisation) so that
they compute what a trained one computes. Paired timing: each round decodes with every variant
back to back (order alternating between rounds); each time is divided by the no-transform time
of the same round; the ratio is the median. Informational (no target): the paper's methods cost
no bits, only decoder time. The bytes row checks that claim: the stream each variant's encoder
writes has exactly the no-transform length (target 1.0).
"""
from __future__ import annotations

import statistics
from typing import List

from benchmarks import Row, timed, torch_device
from benchmarks._images import kodak_images

DEFAULTS = {"rounds": 7, "crop": None}
QUICK = {"rounds": 1, "crop": 128}


def _variants():
    from codecx.transforms import FPC, LPC, LRP

    return {"none": None, "lrp": LRP(), "lpc_learned": LPC("learned"), "lpc_predicted": LPC("predicted"),
            "fpc": FPC()}


def run(args) -> List[Row]:
    import torch

    from codecx.models import Codec, build_backbone
    from codecx.quantizers import MixedQuantizer

    defaults = QUICK if args.quick else DEFAULTS
    rounds = args.rounds or defaults["rounds"]
    device = torch_device(args)
    torch.manual_seed(args.seed)
    bb = build_backbone("mbt_mean", 128, 192)
    codecs = {}
    for name, t in _variants().items():
        codecs[name] = Codec(bb, MixedQuantizer(), transforms=[t] if t is not None else []).to(device).eval()
        if t is not None:
            with torch.no_grad():
                for p in t.parameters():
                    p.normal_(0, 0.02)
    codecs["none"].update(force=True)
    x = kodak_images(1, defaults["crop"])[0].to(device)
    print(f"compensation: {rounds} round(s), device={device}, threads={torch.get_num_threads()}, "
          f"image {tuple(x.shape[-2:])}", flush=True)

    with torch.no_grad():
        encoded = {k: c.compress(x) for k, c in codecs.items()}
        size = {k: sum(len(s) for streams in e["strings"] for s in streams) for k, e in encoded.items()}
        enc = encoded["none"]
        args_ = (enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"])
        for c in codecs.values():  # warm-up
            c.decompress(*args_)
        times = {k: [] for k in codecs}
        names = list(codecs)
        for r in range(rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                times[k].append(timed(lambda: codecs[k].decompress(*args_), device))
    rows = [Row("none_decode_s", statistics.median(times["none"]), None, "s",
                f"mbt_mean 128/192 decompress, {x.shape[-2]}x{x.shape[-1]}")]
    for k in names[1:]:
        params = sum(p.numel() for p in codecs[k].transforms.parameters())
        ratio = statistics.median(a / b for a, b in zip(times[k], times["none"]))
        rows.append(Row(f"{k}_decode_time", ratio, None, "ratio",
                        f"vs no transform, median of paired ratios; {params / 1e6:.2f} M parameters"))
    rows.append(Row("stream_bytes_vs_none", max(size[k] / size["none"] for k in names), 1.0, "ratio",
                    "largest over the transforms: they cost no bits"))
    return rows
