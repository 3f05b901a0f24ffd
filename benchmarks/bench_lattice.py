"""Lattice VQ and latent shift: encode/decode time against scalar quantization on Kodak.

What is compared (issue 5, item 8): one mbt_mean codec (N=128, M=192 by default) coding the
same Kodak images with real bitstreams (`Codec.compress` / `decompress`, entropy coding
included) under

- **scalar**: integer rounding, CompressAI's rANS tables (the baseline of every ratio);
- **hex** / **oct** / **d4**: `LatticeQuantizer(lattice, grouping="scale")` (constriction range
  coder, joint PMF tables keyed on the model's own 256-level scale table like the scalar coder's
  and cached per process: a warm-up pass per variant builds them, and its time is reported
  separately as `*_cold_pass_s`);
- **shift**: scalar + `LatentShift("latent")` with the 8 candidates of `codecx/conf/transform/latent_shift.yaml`,
  all compared on the whole image in one batched `g_s` call (exact, never worse);
- **shift_fast**: the same with 4 candidates compared on ~5% of the latent
  (`codecx/conf/shift/latent_fast.yaml, a preset of transform latent_shift`).

The paper's figures (arXiv 2501.01231, appendix F, table 6, mbt2018-mean, one CPU core): Hex +3%, Oct
+5% encode, +1.8% decode; latent shift x10.1 encode (8 sequential decoder passes), +0.7%
decode. Issue 5 targets latent-shift encode <= 2x.

Real against estimated bits (issues 16, 29) are `bench_rate`'s: every quantizer on two models.
The quantizers here key their tables as the configs do (`scale_keys="nearest"`).

Weights: by default (`--lat-ckpt trained`) the small model of `benchmarks/_trained.py` at
`--lat-N`/`--lat-M` (64/96), trained once and shared with bench_eval; `--lat-ckpt PATH` a
`train.py` checkpoint; `--lat-ckpt random` random weights (timing depends on the weights
through the predicted scales, i.e. table sizes and the share of large-scale groups, so a
trained model is the representative one). Every variant runs
in the same process on the same images. Timing is paired, to resist other load on the
machine: for each round and image all variants run back to back (order alternating), each
variant's time is divided by scalar's from that same (round, image), and the reported ratio
is the median of these paired ratios. Absolute times are per-image medians.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List

from benchmarks import Row
from benchmarks._images import kodak_images
from benchmarks._trained import trained_checkpoint

DEFAULTS = {"rounds": 3, "images": 3}
QUICK = {"rounds": 1, "images": 1}
VARIANTS = ("scalar", "hex", "oct", "d4", "shift", "shift_fast")
LATTICES = ("hex", "oct", "d4")
TARGETS = {  # (encode, decode) ratio targets: the paper's overheads (none for D4), issue 5's shift target
    "hex": (1.05, 1.03), "oct": (1.05, 1.03), "d4": (None, None), "shift": (2.0, 1.02),
    "shift_fast": (2.0, 1.02)}


def add_arguments(group) -> None:
    group.add_argument("--lat-images", type=int, default=None, help="lattice: Kodak images (default 3)")
    group.add_argument("--lat-N", type=int, default=64, help="lattice: mbt_mean N (default 64)")
    group.add_argument("--lat-M", type=int, default=96, help="lattice: mbt_mean M (default 96)")
    group.add_argument("--lat-ckpt", default="trained", help="lattice: a train.py checkpoint (mbt_mean); "
                       "'trained' (default): benchmarks/_trained.py's model at --lat-N/--lat-M, trained "
                       "once (shared with bench_eval); 'random': random weights")
    group.add_argument("--lat-crop", type=int, default=None,
                       help="lattice: crop images to this size (default: full 768x512; --quick: 256)")


def _codec(args, device):
    import torch

    from codecx.models import Codec, build_backbone
    from codecx.models.build import load_weights
    from codecx.quantizers import NoiseQuantizer

    torch.manual_seed(args.seed)
    bb = build_backbone("mbt_mean", args.lat_N, args.lat_M)
    if args.lat_ckpt and args.lat_ckpt != "random":
        path = args.lat_ckpt
        if path == "trained":
            path = trained_checkpoint(N=args.lat_N, M=args.lat_M, quick=args.quick, threads=args.threads)
        load_weights(bb, str(path))  # a train.py checkpoint's backbone
    codec = Codec(bb, NoiseQuantizer()).to(device).eval()
    codec.update(force=True)
    return codec


def _variant(codec, name: str):
    """Set codec.quantizer / the latent shift (a decode-time transform) for variant `name`."""
    from torch import nn

    from codecx.inference.latent_shift import LatentShift
    from codecx.quantizers import LatticeQuantizer, NoiseQuantizer

    codec.transforms = nn.ModuleList()  # the benchmark's codec has no trained transform
    codec.quantizer = NoiseQuantizer(scale_keys="nearest")  # the configs' rule (conf/quantizer)
    if name in LATTICES:
        codec.quantizer = LatticeQuantizer(name, "scale", scale_keys="nearest")
    elif name == "shift":
        codec.add_transforms(LatentShift("latent", [0.0, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]))
    elif name == "shift_fast":
        codec.add_transforms(LatentShift("latent", [0.0, 0.005, 0.01, 0.02], fraction=0.05))
    codec.eval()  # new modules start in training mode (noise instead of the nearest point)


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _code(codec, x, device) -> Dict[str, float]:
    """Encode and decode one image; times, bytes and PSNR."""
    import torch

    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        enc = codec.compress(x)
        _sync(device)
        t1 = time.perf_counter()
        x_hat = codec.decompress(enc["strings"], enc["shape"], enc["y_shape"], enc["z_shape"],
                                 options=enc.get("options"))
        _sync(device)
        t2 = time.perf_counter()
    mse = torch.mean((x_hat - x) ** 2).item()
    return {"enc": t1 - t0, "dec": t2 - t1, "bytes": sum(len(s) for s in enc["strings"][0]),
            "psnr": 10 * __import__("math").log10(1 / max(mse, 1e-12))}


def run(args) -> List[Row]:
    import torch

    from codecx.coding.lattice_coder import LatticeTables

    quick = bool(args.quick)
    defaults = QUICK if quick else DEFAULTS
    rounds = args.rounds or defaults["rounds"]
    n_images = args.lat_images or defaults["images"]
    crop = args.lat_crop or (256 if quick else None)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [x.to(device) for x in kodak_images(n_images, crop)]
    codec = _codec(args, device)
    weights = "random weights" if args.lat_ckpt == "random" else f"checkpoint {args.lat_ckpt}"
    print(f"lattice: mbt_mean N={args.lat_N} M={args.lat_M} ({weights}), {len(images)} image(s) "
          f"{tuple(images[0].shape[-2:])}, {rounds} round(s), device={device}, threads={torch.get_num_threads()}",
          flush=True)

    rows: List[Row] = []
    LatticeTables._cache.clear()
    LatticeTables._cached_symbols = 0
    for name in VARIANTS:  # warm-up (untimed for the ratios): builds the lattice tables
        _variant(codec, name)
        t = time.perf_counter()
        for x in images:
            _code(codec, x, device)
        if name in LATTICES:
            rows.append(Row(f"{name}_cold_pass_s", (time.perf_counter() - t) / len(images), None, "s",
                            "first encode+decode per image, tables built"))

    runs: Dict[str, list] = {v: [] for v in VARIANTS}  # per variant: one dict per (round, image)
    stats: Dict[str, Dict[str, float]] = {v: {"bytes": 0, "psnr": 0.0} for v in VARIANTS}
    for r in range(rounds):
        for i, x in enumerate(images):
            order = VARIANTS if (r + i) % 2 == 0 else tuple(reversed(VARIANTS))
            for name in order:
                _variant(codec, name)
                m = _code(codec, x, device)
                runs[name].append(m)
                if r == 0:
                    stats[name]["bytes"] += m["bytes"]
                    stats[name]["psnr"] += m["psnr"] / len(images)
            print(f"  round {r + 1} image {i + 1}: " + "  ".join(
                f"{v} {runs[v][-1]['enc']:.2f}/{runs[v][-1]['dec']:.2f}s" for v in VARIANTS), flush=True)

    base = runs["scalar"]
    rows.append(Row("scalar_encode_s", statistics.median(m["enc"] for m in base), None, "s", "per image"))
    rows.append(Row("scalar_decode_s", statistics.median(m["dec"] for m in base), None, "s", "per image"))
    for name in VARIANTS[1:]:
        te, td = TARGETS[name]
        for k, what, target in (("enc", "encode", te), ("dec", "decode", td)):
            ratio = statistics.median(m[k] / b[k] for m, b in zip(runs[name], base))
            rows.append(Row(f"{name}_{what}", ratio, target, "ratio", "vs scalar, median of paired ratios"))
    for name in LATTICES:
        rows.append(Row(f"{name}_bytes", stats[name]["bytes"] / stats["scalar"]["bytes"], None, "ratio",
                        "real bytes vs scalar (weights: see header)"))
    for name in VARIANTS[1:]:
        rows.append(Row(f"{name}_psnr_gain", stats[name]["psnr"] - stats["scalar"]["psnr"], None, "dB",
                        "vs scalar, same model"))
    return rows
