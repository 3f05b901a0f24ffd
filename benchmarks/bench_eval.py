"""Eval path: codecx's per-image evaluation vs CompressAI's own eval loop (speed, same output), real/est. bpp.

What is compared (issue 3, item 8; issue 33, item 4): one trained model (`--ev-ckpt`, by
default the small mbt_mean of `benchmarks/_trained.py`, trained once by `train.py
experiment=cpu_study`) evaluating the same Kodak images, on the CPU (where codecx eval
codes), same torch threads:

- **codecx**: what `codecx.eval.loop.evaluate` does per image (`codecx.eval.code.measure`):
  `encode_image` (`Codec.compress` with the rate estimate + the codecx container: header,
  streams, CRC32), `decode_image` (parse and check the file, `Codec.decompress`, the synthesis
  in channels-last memory format where that is exact), 8-bit PSNR, MS-SSIM, the HF power ratio;
- **codecx NCHW**: the same with the synthesis in NCHW (`channels_last=False`), what eval did
  before issue 33;
- **compressai**: CompressAI's own eval loop per image (`compressai.utils.eval_model`'s
  `inference`: `compress`, `decompress`, 8-bit PSNR and MS-SSIM) of the plain CompressAI class
  (mbt_mean: `compressai.models.MeanScaleHyperprior(N, M)`) holding the same state dict.

All run `update(force=True)` on the same scale table. Speed: CompressAI time / codecx time
(higher is better), for the whole per-image evaluation, encode and decode. Timing is paired as
in bench_lattice: per round and image the variants run back to back (order rotating), and a
ratio is the median of the paired ratios. Where the time goes: forward hooks time `g_a`
(analysis), `h_a` + `h_s` (hyper), `g_s` (synthesis) of both models; coding is the rest of
encode + decode (entropy coding, container, checks), metrics the rest of the image's time.
"Same work": the decoded images must be bit-identical to CompressAI's `decompress` (the
streams too, reported).

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
    """CompressAI's own round trip of one image: streams, decoded image (the same-work check)."""
    import torch

    with torch.no_grad():
        out = net.compress(x)
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    return {"x_hat": x_hat, "streams": [s[0] for s in out["strings"]]}


def _compressai_eval(net, x) -> Dict:
    """CompressAI's eval loop on one image (`compressai.utils.eval_model`'s `inference`: pad,
    compress, decompress, 8-bit PSNR and MS-SSIM): total, encode and decode seconds. Images
    under 161 px a side (MS-SSIM's minimum) get the same loop with PSNR only."""
    import torch
    from compressai.utils.eval_model.__main__ import inference, psnr

    t0 = time.perf_counter()
    if min(x.shape[-2:]) > 160:
        m = inference(net, x[0])
    else:
        with torch.no_grad():
            t = time.time()
            out = net.compress(x)
            enc = time.time() - t
            t = time.time()
            x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
            dec = time.time() - t
            psnr((x * 255).clamp(0, 255).round(), (x_hat * 255).clamp(0, 255).round())
        m = {"encoding_time": enc, "decoding_time": dec}
    return {"total": time.perf_counter() - t0, "enc": m["encoding_time"], "dec": m["decoding_time"]}


def _codecx(codec, x, fp, channels_last: bool = True) -> Dict:
    """eval's work on one image (`measure`: a codecx file, decoded, measured): seconds, rates,
    decoded image."""
    from codecx.eval.code import measure

    t0 = time.perf_counter()
    m, x_hat = measure(codec, x, fp, channels_last=channels_last)
    return {"total": time.perf_counter() - t0, "enc": m["encoding_time"], "dec": m["decoding_time"],
            "x_hat": x_hat, **m}


def _codecx_streams(codec, x, fp) -> List[bytes]:
    """The streams of the codecx file of `x` (the bytes `code_image` wrote: coding is deterministic)."""
    from codecx.coding.container import encode_image, unpack

    return unpack(encode_image(codec, x, fp))[1]


class StageClock:
    """Seconds spent in the analysis (`g_a`), hyper (`h_a`, `h_s`) and synthesis (`g_s`)
    transforms of a model, by forward hooks; `take()` returns them and starts again."""

    STAGES = {"g_a": "analysis", "h_a": "hyper", "h_s": "hyper", "g_s": "synthesis"}

    def __init__(self, model):
        self.spent: Dict[str, float] = {}
        for name, stage in self.STAGES.items():
            module = getattr(model, name, None)
            if module is not None:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(lambda m, a, o, stage=stage: self._stop(m, stage))

    def _start(self, module, args) -> None:
        module._codecx_t0 = time.perf_counter()

    def _stop(self, module, stage: str) -> None:
        self.spent[stage] = self.spent.get(stage, 0.0) + time.perf_counter() - module._codecx_t0

    def take(self) -> Dict[str, float]:
        out, self.spent = self.spent, {}
        return out


def _stages(clock: StageClock, m: Dict) -> Dict[str, float]:
    """The five stages of one measured image: the hooked transforms, coding (the rest of encode
    and decode) and metrics (the rest of the image's time)."""
    spent = clock.take()
    out = {k: spent.get(k, 0.0) for k in ("analysis", "hyper", "synthesis")}
    out["coding"] = m["enc"] + m["dec"] - sum(out.values())
    out["metrics"] = m["total"] - m["enc"] - m["dec"]
    return out


STAGES = ("analysis", "hyper", "coding", "synthesis", "metrics")


def run(args) -> List[Row]:
    import torch

    from codecx.eval.load import fingerprint_of, load_codec
    from codecx.quantizers.channels import exact_in_channels_last
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
    nhwc = exact_in_channels_last(codec.backbone.g_s)
    print(f"eval: {ckpt} ({config['model']['name']} N={net.N} M={getattr(net, 'M', '-')}, "
          f"{type(net).__name__} for CompressAI), {len(images)} image(s) {tuple(images[0].shape[-2:])}, "
          f"{rounds} round(s), device=cpu, threads={torch.get_num_threads()}, channels-last synthesis: "
          f"{'yes' if nhwc else 'no (not exact for this g_s)'}", flush=True)

    clocks = {"codecx": StageClock(codec.backbone), "compressai": StageClock(net)}
    variants = {"codecx": lambda x: _codecx(codec, x, fp),
                "codecx_nchw": lambda x: _codecx(codec, x, fp, channels_last=False),
                "compressai": lambda x: _compressai_eval(net, x)}
    for _ in range(warmup):  # untimed: first-call allocations, oneDNN primitives
        for f in variants.values():
            f(images[0])
    for c in clocks.values():
        c.take()
    names = list(variants)
    runs: Dict[str, list] = {v: [] for v in names}
    stages: Dict[str, list] = {"codecx": [], "compressai": []}
    rates, differ, max_diff, streams_differ = [], 0, 0.0, 0
    for r in range(rounds):
        for i, x in enumerate(images):
            k = (r * len(images) + i) % len(names)
            m = {}
            for name in names[k:] + names[:k]:
                for c in clocks.values():
                    c.take()
                m[name] = variants[name](x)
                runs[name].append({t: m[name][t] for t in ("total", "enc", "dec")})
                if name in clocks:
                    stages[name].append(_stages(clocks[name], m[name]))
            a, b = m["codecx"], m["compressai"]
            if r == 0:  # untimed: CompressAI's decoded image and streams, codecx's streams
                rates.append(a)
                ref = _compressai(net, x)
                diff = (a["x_hat"] - ref["x_hat"]).abs().max().item()
                differ += not (torch.equal(a["x_hat"], ref["x_hat"])
                               and torch.equal(a["x_hat"], m["codecx_nchw"]["x_hat"]))
                max_diff = max(max_diff, diff)
                a["streams"] = _codecx_streams(codec, x, fp)
                streams_differ += [bytes(s) for s in a["streams"]] != [bytes(s) for s in ref["streams"]]
                del a["x_hat"]  # keep the rates only
            print(f"  round {r + 1} image {i + 1}: codecx {a['total']:.3f}s ({a['enc']:.3f}/{a['dec']:.3f} "
                  f"enc/dec), NCHW {m['codecx_nchw']['total']:.3f}s, compressai {b['total']:.3f}s "
                  f"({b['enc']:.3f}/{b['dec']:.3f})  bpp {a['bpp']:.4f} (est {a['bpp_est']:.4f})", flush=True)

    cx, nchw, ca = runs["codecx"], runs["codecx_nchw"], runs["compressai"]
    paired = lambda k, num, den: statistics.median(b[k] / a[k] for a, b in zip(den, num))  # noqa: E731
    rows: List[Row] = [
        Row("evaluation speed codecx/compressai", paired("total", ca, cx), 1.5, "ratio",
            "per image: coding + metrics; compressai time / codecx time, median of paired ratios",
            higher_is_better=True),
        Row("codecx_eval_s", statistics.median(m["total"] for m in cx), None, "s", "per image"),
        Row("compressai_eval_s", statistics.median(m["total"] for m in ca), None, "s", "per image"),
    ]
    for k, what in (("enc", "encode"), ("dec", "decode")):
        rows.append(Row(f"codecx_{what}_s", statistics.median(m[k] for m in cx), None, "s", "per image"))
        rows.append(Row(f"compressai_{what}_s", statistics.median(m[k] for m in ca), None, "s", "per image"))
        rows.append(Row(f"{what} speed codecx/compressai", paired(k, ca, cx), 1.0, "ratio",
                        "compressai time / codecx time, median of paired ratios", higher_is_better=True))
    rows.append(Row("decode speed channels-last/NCHW synthesis", paired("dec", nchw, cx), None, "ratio",
                    "codecx NCHW decode time / channels-last decode time" if nhwc else "not used: not exact",
                    higher_is_better=True))
    print("where the time goes, s per image (median): stage  codecx  compressai", flush=True)
    for stage in STAGES:
        ours = statistics.median(s[stage] for s in stages["codecx"])
        theirs = statistics.median(s[stage] for s in stages["compressai"])
        print(f"  {stage:10s} {ours:.3f}  {theirs:.3f}", flush=True)
        rows.append(Row(f"stage {stage}", ours, None, "s", f"codecx, per image (compressai {theirs:.3f} s)"))
    n = len(rates)
    rows.append(Row("same work: decoded images differ", float(differ), 0.0, "images",
                    f"of {n} (vs CompressAI and vs the NCHW synthesis); max |diff| {max_diff:.3g}"))
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
