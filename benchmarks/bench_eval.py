"""Eval path: codecx files vs CompressAI's compress/decompress (speed, same output), real/est. bpp.

What is compared (issue 3, item 8): one trained model (`--ev-ckpt`, by default the small
mbt_mean of `benchmarks/_trained.py`, trained once by `train.py experiment=cpu_study`)
coding the same Kodak images, on the CPU (where codecx eval codes), same torch threads:

- **codecx**: what eval does per image (`codecx.eval.code.code_image`): `encode_image`
  (`Codec.compress` + the codecx container: header, streams, CRC32), then `decode_image`
  (parse and check the file, `Codec.decompress`);
- **compressai**: CompressAI's own `compress` / `decompress` of the plain CompressAI class
  (mbt_mean: `compressai.models.MeanScaleHyperprior(N, M)`) holding the same state dict.

Both run `update(force=True)`. Speed: CompressAI time / codecx time (higher is better, >= 1:
codecx's eval path is no slower), encode and decode separately. Timing is paired as in
bench_lattice: per round and image both variants run back to back (order alternating), and
the ratio is the median of the paired ratios. "Same work": the decoded images must be
bit-identical (the streams too, reported).

Rate: real bpp = codecx file bytes * 8 / pixels (header and CRC included, what eval
reports), estimated bpp = -sum log2 of the y and z likelihoods / pixels (the training rate
term); the row is the mean of real / estimated over the images (also with the streams only).
"""
from __future__ import annotations

import inspect
import statistics
import time
from typing import Dict, List

from benchmarks import Row, cpu_settings
from benchmarks._images import kodak_images
from benchmarks._trained import trained_checkpoint

DEFAULTS = {"rounds": 2, "images": 24, "warmup": 1}
QUICK = {"rounds": 1, "images": 1, "warmup": 1}
VARIANTS = ("codecx", "compressai")


def add_arguments(group) -> None:
    group.add_argument("--ev-ckpt", default=None,
                       help="eval: a train.py checkpoint (default: benchmarks/_trained.py's small "
                            "mbt_mean, trained once into runs/bench/)")
    group.add_argument("--ev-images", type=int, default=None, help="eval: Kodak images (default all 24)")
    group.add_argument("--ev-crop", type=int, default=None,
                       help="eval: crop images to this size, a multiple of 64 (default: full 768x512)")
    group.add_argument("--ev-N", type=int, default=64, help="eval: N of the model trained without --ev-ckpt")
    group.add_argument("--ev-M", type=int, default=96, help="eval: M of the model trained without --ev-ckpt")
    group.add_argument("--ev-train-steps", type=int, default=None,
                       help="eval: training steps without --ev-ckpt (default 300; --quick: 20)")


def compressai_model(codec):
    """The plain CompressAI class of `codec.backbone` with its state dict, updated on the codec's
    scale table."""
    bb = codec.backbone
    cls = next(c for c in type(bb).__mro__ if c.__module__.split(".")[0] == "compressai")
    kwargs = {"N": int(bb.N)}
    if "M" in inspect.signature(cls.__init__).parameters:
        kwargs["M"] = int(bb.M)
    net = cls(**kwargs)
    net.load_state_dict(bb.state_dict())  # CompressAI resizes the CDF buffers
    net = net.eval()
    # the same CDF tables as the codec (its scale table), so both code exactly the same streams
    net.update(scale_table=bb.gaussian_conditional.scale_table.clone(), force=True)
    return net


def _compressai(net, x) -> Dict:
    """CompressAI's own round trip of one image: times, streams, decoded image."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        out = net.compress(x)
        t1 = time.perf_counter()
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
        t2 = time.perf_counter()
    return {"enc": t1 - t0, "dec": t2 - t1, "x_hat": x_hat,
            "streams": [s[0] for s in out["strings"]]}


def _codecx(codec, x, fp) -> Dict:
    """eval's round trip of one image through a codecx file: times, rates, decoded image."""
    from codecx.eval.code import code_image

    m, x_hat = code_image(codec, x, fp)
    return {"enc": m["encoding_time"], "dec": m["decoding_time"], "x_hat": x_hat, **m}


def _codecx_streams(codec, x, fp) -> List[bytes]:
    """The streams of the codecx file of `x` (the bytes `code_image` wrote: coding is deterministic)."""
    from codecx.coding.container import encode_image, unpack

    return unpack(encode_image(codec, x, fp))[1]


def run(args) -> List[Row]:
    import torch

    from codecx.eval.load import fingerprint_of, load_codec
    from codecx.quantizers.scalar import ScalarQuantizer

    quick = bool(args.quick)
    defaults = cpu_settings(args, DEFAULTS, QUICK, "eval: codecx eval codes on the CPU")
    rounds, warmup = defaults["rounds"], defaults["warmup"]
    ckpt = trained_checkpoint(args.ev_ckpt, N=args.ev_N, M=args.ev_M, steps=args.ev_train_steps,
                              quick=quick, threads=args.threads)
    codec, config = load_codec(ckpt)
    if not isinstance(codec.quantizer, ScalarQuantizer):
        raise ValueError(f"{ckpt}: quantizer {type(codec.quantizer).__name__}; CompressAI codes "
                         "scalar quantization only")
    codec.update(force=True)
    net = compressai_model(codec)
    fp = fingerprint_of(codec, config)
    images = kodak_images(args.ev_images or defaults["images"], args.ev_crop)
    stride = codec.backbone.stride
    if any(d % stride for x in images for d in x.shape[-2:]):
        raise ValueError(f"image sizes must be multiples of {stride} (CompressAI's compress does not pad)")
    print(f"eval: {ckpt} ({config['model']['name']} N={net.N} M={getattr(net, 'M', '-')}, "
          f"{type(net).__name__} for CompressAI), {len(images)} image(s) {tuple(images[0].shape[-2:])}, "
          f"{rounds} round(s), device=cpu, threads={torch.get_num_threads()}", flush=True)

    for _ in range(warmup):  # untimed: first-call allocations
        _codecx(codec, images[0], fp)
        _compressai(net, images[0])
    runs: Dict[str, list] = {v: [] for v in VARIANTS}
    rates, differ, max_diff, streams_differ = [], 0, 0.0, 0
    for r in range(rounds):
        for i, x in enumerate(images):
            order = VARIANTS if (r + i) % 2 == 0 else tuple(reversed(VARIANTS))
            m = {}
            for name in order:
                m[name] = _codecx(codec, x, fp) if name == "codecx" else _compressai(net, x)
                runs[name].append({"enc": m[name]["enc"], "dec": m[name]["dec"]})
            a, b = m["codecx"], m["compressai"]
            if r == 0:
                rates.append(a)
                diff = (a["x_hat"] - b["x_hat"]).abs().max().item()
                differ += not torch.equal(a["x_hat"], b["x_hat"])
                max_diff = max(max_diff, diff)
                a["streams"] = _codecx_streams(codec, x, fp)  # untimed
                streams_differ += [bytes(s) for s in a["streams"]] != [bytes(s) for s in b["streams"]]
                del a["x_hat"]  # keep the rates only
            print(f"  round {r + 1} image {i + 1}: codecx {a['enc']:.3f}/{a['dec']:.3f}s  compressai "
                  f"{b['enc']:.3f}/{b['dec']:.3f}s (enc/dec)  bpp {a['bpp']:.4f} (est {a['bpp_est']:.4f})",
                  flush=True)

    cx, ca = runs["codecx"], runs["compressai"]
    rows: List[Row] = []
    for k, what in (("enc", "encode"), ("dec", "decode")):
        rows.append(Row(f"codecx_{what}_s", statistics.median(m[k] for m in cx), None, "s", "per image"))
        rows.append(Row(f"compressai_{what}_s", statistics.median(m[k] for m in ca), None, "s", "per image"))
        ratio = statistics.median(b[k] / a[k] for a, b in zip(cx, ca))
        rows.append(Row(f"{what} speed codecx/compressai", ratio, 1.0, "ratio",
                        "compressai time / codecx time, median of paired ratios", higher_is_better=True))
    n = len(rates)
    rows.append(Row("same work: decoded images differ", float(differ), 0.0, "images",
                    f"of {n}; max |diff| {max_diff:.3g}"))
    rows.append(Row("same work: streams differ", float(streams_differ), None, "images", f"of {n}"))
    rows.append(Row("real/estimated bpp", sum(p["bpp"] / p["bpp_est"] for p in rates) / n, 1.01, "ratio",
                    "codecx file (header, CRC) / likelihoods, mean over images"))
    rows.append(Row("real/estimated bpp, streams only",
                    sum(p["bpp_streams"] / p["bpp_est"] for p in rates) / n, None, "ratio", "mean over images"))
    rows.append(Row("bpp", sum(p["bpp"] for p in rates) / n, None, "bpp", "real, codecx file"))
    rows.append(Row("bpp_est", sum(p["bpp_est"] for p in rates) / n, None, "bpp", "likelihoods"))
    header = sum(p["bytes"] - sum(len(s) for s in p["streams"]) for p in rates) / n
    rows.append(Row("header+CRC bytes", header, None, "B", "per image, outside the streams"))
    return rows
