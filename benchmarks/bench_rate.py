"""Real against estimated bits of every quantizer (scalar, hex, oct, d4) on more than one trained model.

Issue 29 item 7's target: the bits of the real codecx file (header and CRC included) within 1%
of the estimate, `-sum log2 p` of the eval-mode likelihoods (what training and `bpp_est`
count), for every quantizer on any trained model, not only codecx's own. Measured on two
models trained by different code:

- **codecx**: `benchmarks/_trained.py`'s `train.py experiment=cpu_study` mbt_mean (N=64, M=96,
  300 steps, lmbda 0.0067), shared with bench_eval / bench_lattice;
- **compressai**: `benchmarks/_compressai_model.py`'s `compressai.models.MeanScaleHyperprior`
  trained by a plain PyTorch loop with CompressAI's own forward (N=64, M=96, 400 steps,
  lmbda 0.013), loaded into codecx as a CompressAI state dict (`model.weights`).

Each quantizer is built from its config (`conf/quantizer/{noise,hex,oct,d4}.yaml`: what
`eval.py quantizer=...` codes with); `--rate-rules up,nearest` also measures the other rule
of keying a scale to the coder's scale table (`codecx.coding.scale_keys`; "up" is
CompressAI's and the rule before issue 29). Per (model, quantizer): the whole files
(`*_real_vs_est`, target 1.01) and the entropy-coded streams alone (`*_streams_vs_est`), each
summed over the images and divided by the estimate. Nothing is timed; nothing is downloaded.
"""
from __future__ import annotations

from typing import Dict, List

from benchmarks import Row
from benchmarks._images import kodak_images

DEFAULTS = {"images": 3}
QUICK = {"images": 1, "crop": 128}
QUANTIZERS = ("noise", "hex", "oct", "d4")  # config names; "noise" is the scalar coder
MODELS = ("codecx", "compressai")
RATE_TARGET = 1.01


def add_arguments(group) -> None:
    group.add_argument("--rate-images", type=int, default=None, help="rate: Kodak images (default 3)")
    group.add_argument("--rate-crop", type=int, default=None,
                       help="rate: crop images to this size (default: full 768x512; --quick: 128)")
    group.add_argument("--rate-models", default=",".join(MODELS),
                       help="rate: comma-separated models among codecx, compressai, or train.py checkpoints")
    group.add_argument("--rate-quantizers", default=",".join(QUANTIZERS),
                       help="rate: comma-separated quantizer configs (default all; noise = scalar)")
    group.add_argument("--rate-rules", default="nearest",
                       help="rate: comma-separated scale-key rules besides the configs' (up, nearest)")


def _codec(name: str, quick: bool, threads):
    """(label, codec) for model `name`: the codecx or CompressAI benchmark model, or a checkpoint."""
    from codecx.models import Codec, build_backbone
    from codecx.models.build import load_weights
    from codecx.quantizers import NoiseQuantizer

    if name == "codecx":
        from benchmarks._trained import trained_checkpoint

        path = trained_checkpoint(quick=quick, threads=threads)
    elif name == "compressai":
        from benchmarks._compressai_model import compressai_checkpoint

        path = compressai_checkpoint(quick=quick)
    else:
        path = name
    bb = build_backbone("mbt_mean", 64, 96)
    load_weights(bb, str(path))  # a train.py checkpoint's backbone or a CompressAI state dict
    codec = Codec(bb, NoiseQuantizer()).eval()
    codec.update(force=True)
    return name if name in MODELS else "ckpt", codec


def _quantizer(name: str, rule: str):
    """The quantizer of config `name` (conf/quantizer), keyed by `rule` (None: the config's)."""
    from hydra.utils import instantiate

    from codecx.config import group_option
    from codecx.train import CONF_DIR

    node = group_option("quantizer", name, CONF_DIR, config_name="train")
    if rule is not None:
        node["scale_keys"] = rule
    return instantiate(node).eval(), node.get("scale_keys", "up")


def _bits(codec, x) -> Dict[str, float]:
    """Bits of the codecx file of `x` (header included), of its streams, and the estimate."""
    import torch

    from codecx.coding.container import encode_image, unpack
    from codecx.losses import bits_per_pixel

    with torch.no_grad():
        data = encode_image(codec, x, bytes(8))
        est = bits_per_pixel(codec(x).likelihoods, 1).item()
    return {"file": 8.0 * len(data), "streams": 8.0 * sum(len(s) for s in unpack(data)[1]), "est": est}


def run(args) -> List[Row]:
    import torch

    quick = bool(args.quick)
    defaults = QUICK if quick else DEFAULTS
    if args.threads:
        torch.set_num_threads(args.threads)
    images = kodak_images(args.rate_images or defaults["images"], args.rate_crop or defaults.get("crop"))
    quantizers = [q for q in args.rate_quantizers.split(",") if q]
    rules = [r for r in args.rate_rules.split(",") if r]
    print(f"rate: {len(images)} image(s) {tuple(images[0].shape[-2:])}, quantizers {', '.join(quantizers)}, "
          f"threads={torch.get_num_threads()}", flush=True)
    rows: List[Row] = []
    for model in [m for m in args.rate_models.split(",") if m]:
        label, codec = _codec(model, quick, args.threads)
        for qname in quantizers:
            configured = _quantizer(qname, None)[1]
            for rule in [configured] + [r for r in rules if r != configured]:
                codec.quantizer, _ = _quantizer(qname, rule)
                b = {"file": 0.0, "streams": 0.0, "est": 0.0}
                for x in images:
                    for k, v in _bits(codec, x).items():
                        b[k] += v
                name = f"{label}_{'scalar' if qname == 'noise' else qname}" + ("" if rule == configured else f"_{rule}")
                px = sum(x.shape[-2] * x.shape[-1] for x in images)
                print(f"  {name} ({rule}): real/estimated {b['file'] / b['est']:.4f} (file), "
                      f"{b['streams'] / b['est']:.4f} (streams), estimate {b['est'] / px:.4f} bpp", flush=True)
                target = RATE_TARGET if rule == configured else None  # the other rule: for comparison
                rows.append(Row(f"{name}_real_vs_est", b["file"] / b["est"], target, "ratio",
                                f"codecx file bits (header incl.) / estimated bits, scale_keys={rule}"))
                rows.append(Row(f"{name}_streams_vs_est", b["streams"] / b["est"], None, "ratio",
                                "entropy-coded streams / estimated bits"))
    return rows
