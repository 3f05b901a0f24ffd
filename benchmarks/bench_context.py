"""Context-model coding (mbt2018): codecx vs CompressAI's compress/decompress, same streams and images.

What is compared (issue 33, items 1-2): one mbt2018 (`--cx-model`, N=128, M=192 by default;
random weights, the entropy bottleneck perturbed as tests/test_models.py does and g_a's last
layer scaled so that y spans a few integers, or `--cx-weights` a state dict) codes the same
Kodak images on the CPU, same torch threads, CDF tables of `--cx-scale-levels` (64:
CompressAI's):

- **codecx**: `Codec.compress(x, estimate=False)` (wavefront encoder, `codecx.coding.context`)
  and `Codec.decompress` (the serial decoder with the compiled rANS decoder), streams only;
- **compressai**: CompressAI's own `compress` / `decompress` of the plain CompressAI class
  holding the same state dict and CDF tables (`bench_eval.compressai_model`);
- **mean-scale**: codecx's `mbt_mean` of the same N, M (random weights) compressing the same
  images, the floor an mbt encoder is held to (its cost is mostly g_a's).

Timing is paired as in bench_eval: per round and image the variants run back to back (order
alternating) and a ratio is the median of the paired ratios; the targets are on wall time, and
the same ratios on process CPU time are printed beside them (the work done, what a shared,
loaded machine distorts least). "Same work": codecx's streams must
equal CompressAI's byte for byte and the decoded images be identical (`torch.equal`).
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List

from benchmarks import Row, cpu_settings
from benchmarks._images import kodak_images

DEFAULTS = {"rounds": 1, "images": 2, "warmup": 1, "crop": None}
QUICK = {"rounds": 1, "images": 1, "warmup": 1, "crop": 128}
VARIANTS = ("codecx", "compressai", "mean_scale")


def add_arguments(group) -> None:
    group.add_argument("--cx-model", default="mbt", choices=("mbt", "cheng_anchor", "cheng_attn"),
                       help="context: the context-model backbone (default mbt)")
    group.add_argument("--cx-N", type=int, default=128, help="context: N (default 128)")
    group.add_argument("--cx-M", type=int, default=192, help="context: M (default 192; cheng: M = N)")
    group.add_argument("--cx-weights", default=None, help="context: a CompressAI / codecx state dict to load")
    group.add_argument("--cx-images", type=int, default=None, help="context: Kodak images (default 2; --quick: 1)")
    group.add_argument("--cx-crop", type=int, default=None,
                       help="context: crop images to this size, a multiple of 64 (default: full 768x512)")
    group.add_argument("--cx-scale-levels", type=int, default=64,
                       help="context: scale-table levels (default 64, CompressAI's: its bitstreams)")


def _random_weights_(backbone, seed: int) -> None:
    """Non-trivial entropy models and latents of a few integers for a randomly initialised model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "entropy_bottleneck" in n and not n.endswith("quantiles"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        last = [m for m in backbone.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(8.0)


def _codec(name: str, args):
    import torch

    from codecx.models import Codec, build_backbone
    from codecx.quantizers import NoiseQuantizer

    torch.manual_seed(args.seed)
    M = None if name.startswith("cheng") else args.cx_M
    weights = args.cx_weights if name == args.cx_model else None
    bb = build_backbone(name, N=args.cx_N, M=M, weights=weights, scale_levels=args.cx_scale_levels)
    if not weights:
        _random_weights_(bb, args.seed)
    codec = Codec(bb, NoiseQuantizer()).eval()  # scale_keys "up": CompressAI's table keys
    codec.update(force=True)
    return codec


def _time(fn):
    """(wall seconds, process CPU seconds, result) of `fn()`."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def run(args) -> List[Row]:
    import torch

    from benchmarks.bench_eval import compressai_model

    defaults = cpu_settings(args, DEFAULTS, QUICK, "context: context-model coding runs on the CPU")
    rounds, warmup = defaults["rounds"], defaults["warmup"]
    codec = _codec(args.cx_model, args)
    mean_scale = _codec("mbt_mean", args)
    net = compressai_model(codec)
    images = kodak_images(args.cx_images or defaults["images"], args.cx_crop or defaults["crop"])
    if any(d % 64 for x in images for d in x.shape[-2:]):
        raise ValueError("image sizes must be multiples of 64 (CompressAI's compress does not pad)")
    bb = codec.backbone
    print(f"context: {args.cx_model} N={bb.N} M={bb.M} ({type(net).__name__} for CompressAI), "
          f"{args.cx_scale_levels} scale levels, {len(images)} image(s) {tuple(images[0].shape[-2:])}, "
          f"{rounds} round(s), device=cpu, threads={torch.get_num_threads()}", flush=True)

    def one(name, x) -> Dict:
        with torch.no_grad():
            if name == "codecx":
                te, ce, c = _time(lambda: codec.compress(x, estimate=False))
                td, cd, d = _time(lambda: codec.decompress(c["strings"], c["shape"], c["y_shape"], c["z_shape"]))
                streams = [bytes(s) for s in c["strings"][0]]
            elif name == "compressai":
                te, ce, c = _time(lambda: net.compress(x))
                td, cd, d = _time(lambda: net.decompress(c["strings"], c["shape"])["x_hat"])
                streams = [bytes(s[0]) for s in c["strings"]]
            else:
                te, ce, _ = _time(lambda: mean_scale.compress(x, estimate=False))
                return {"enc": te, "enc_cpu": ce}
            return {"enc": te, "dec": td, "enc_cpu": ce, "dec_cpu": cd, "x_hat": d, "streams": streams}

    for _ in range(warmup):  # untimed: first calls (oneDNN primitives, the compiled decoder)
        for name in VARIANTS:
            one(name, images[0][..., :128, :128])
    runs: Dict[str, list] = {v: [] for v in VARIANTS}
    differ, max_diff, streams_differ, n = 0, 0.0, 0, 0
    for r in range(rounds):
        for i, x in enumerate(images):
            order = VARIANTS if (r + i) % 2 == 0 else tuple(reversed(VARIANTS))
            m = {name: one(name, x) for name in order}
            for name in VARIANTS:
                runs[name].append({k: m[name].get(k) for k in ("enc", "dec", "enc_cpu", "dec_cpu")})
            a, b = m["codecx"], m["compressai"]
            if r == 0:
                n += 1
                differ += not torch.equal(a["x_hat"], b["x_hat"])
                max_diff = max(max_diff, (a["x_hat"] - b["x_hat"]).abs().max().item())
                streams_differ += a["streams"] != b["streams"]
            print(f"  round {r + 1} image {i + 1}: codecx {a['enc']:.3f}/{a['dec']:.3f}s  compressai "
                  f"{b['enc']:.3f}/{b['dec']:.3f}s (enc/dec)  mean-scale encode {m['mean_scale']['enc']:.3f}s",
                  flush=True)

    cx, ca, ms = runs["codecx"], runs["compressai"], runs["mean_scale"]
    med = statistics.median
    rows: List[Row] = []
    for k, what, target in (("enc", "encode", 8.0), ("dec", "decode", 5.0)):
        rows.append(Row(f"codecx_{what}_s", med(m[k] for m in cx), None, "s", "per image"))
        rows.append(Row(f"compressai_{what}_s", med(m[k] for m in ca), None, "s", "per image"))
        rows.append(Row(f"{what} speed codecx/compressai", med(b[k] / a[k] for a, b in zip(cx, ca)), target,
                        "ratio", "compressai time / codecx time, median of paired ratios", higher_is_better=True))
    rows.append(Row("mean_scale_encode_s", med(m["enc"] for m in ms), None, "s", "per image, codecx mbt_mean"))
    rows.append(Row(f"{args.cx_model} encode / mean-scale encode", med(a["enc"] / c["enc"] for a, c in zip(cx, ms)),
                    1.3, "ratio", "codecx times, median of paired ratios"))
    # process CPU seconds: the work done, much less sensitive than wall time to a shared machine
    for k, what in (("enc_cpu", "encode"), ("dec_cpu", "decode")):
        rows.append(Row(f"{what} CPU-time ratio compressai/codecx", med(b[k] / a[k] for a, b in zip(cx, ca)), None,
                        "ratio", "process CPU seconds, median of paired ratios", higher_is_better=True))
    rows.append(Row(f"{args.cx_model} encode / mean-scale encode, CPU time",
                    med(a["enc_cpu"] / c["enc_cpu"] for a, c in zip(cx, ms)), None, "ratio", "process CPU seconds"))
    rows.append(Row("same work: streams differ", float(streams_differ), 0.0, "images",
                    f"of {n}, codecx vs CompressAI, byte for byte"))
    rows.append(Row("same work: decoded images differ", float(differ), 0.0, "images",
                    f"of {n}; max |diff| {max_diff:.3g}"))
    return rows
