"""`codecx`: train / eval (Hydra), compress / decompress images with a checkpoint, BD-rate, RD
plots, comparisons of result folders, sweep reports."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image file as a (1,3,H,W) float tensor in [0,1] (upright, 16-bit scaled to 8 bits,
    alpha dropped: `codecx.data.read_rgb`); ValueError if it cannot be read."""
    from codecx.data.images import read_rgb

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    arr = read_rgb(p)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255).unsqueeze(0)


def write_png(x: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a (1,3,H,W) image in [0,1] as an 8-bit PNG (rounded, as PSNR is measured)."""
    from PIL import Image

    from codecx.metrics.rd import to_uint8

    arr = to_uint8(x[0]).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path, format="PNG")


def load_method_codec(checkpoint: str, quantizer: Optional[str], transform: Optional[str] = None,
                      refine: Optional[str] = None, shift: Optional[str] = None):
    """(codec, config) of a checkpoint with the named options of codecx/conf (None: the
    checkpoint's own quantizer, transforms and refiners): `quantizer`; `transform`, `refine`:
    comma-separated names, applied in order (decode-time transforms after the checkpoint's);
    `shift`: a preset of the decode-time transform latent_shift (conf/shift, first)."""
    from codecx.config import group_option
    from codecx.eval.load import load_codec
    from codecx.conf import CONF_DIR

    def nodes(group: str, names: Optional[str]):
        out: dict = {}
        for name in (names or "").split(","):
            name = name.strip()
            if name and name != "none":
                twice = set(out) & set(node := group_option(group, name, CONF_DIR))
                if twice:
                    raise ValueError(f"{group} {name}: it adds {', '.join(sorted(twice))} a second time")
                out.update(node)
        return out

    q = group_option("quantizer", quantizer, CONF_DIR) if quantizer else None
    added = nodes("shift", shift)
    for k, v in nodes("transform", transform).items():
        if k in added:
            raise ValueError(f"--shift {shift} is transform {k} already: give one of them")
        added[k] = v
    return load_codec(checkpoint, q, added or None, refine=nodes("refine", refine) or None)


def image_size(path: str | os.PathLike) -> tuple:
    """(height, width) of an image file, upright, from its header (no pixel is decoded)."""
    import warnings

    from PIL import Image

    from codecx.data.images import ImageReadError, oriented_size

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: check_encode decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = oriented_size(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return h, w


def cmd_compress(a: argparse.Namespace) -> int:
    from codecx.coding.container import check_encode, encode_image
    from codecx.eval.code import set_coding_threads
    from codecx.eval.load import fingerprint_of
    from codecx.eval.checkpoint import CheckpointWriteError, atomic_write

    set_coding_threads(a.threads)
    codec, config = load_method_codec(a.checkpoint, a.quantizer, a.transform, a.refine, a.shift)
    # the size from the header against the cap and the free memory, before any pixel is decoded
    check_encode(codec.backbone, image_size(a.image), a.image, a.max_pixels, "--max-pixels N")
    x = read_image(a.image)
    # the names go into the header, so that `decompress` rebuilds the same method by itself
    options = {k: v for k, v in (("quantizer", a.quantizer), ("transform", a.transform), ("shift", a.shift)) if v}
    data = encode_image(codec, x, fingerprint_of(codec, config), options, max_pixels=a.max_pixels,
                        name=a.image)
    out = Path(a.output or Path(a.image).with_suffix(".cdcx"))
    try:  # a temp file beside it, renamed: never a partial or 0-byte file at `out`
        atomic_write(out, lambda f: f.write(data), what="codecx file")
    except CheckpointWriteError:  # disk full: names the path and what was kept
        raise
    except OSError as e:  # e.g. permission denied (on the temp file's name): name the target
        raise OSError(f"cannot write {out}: {e.strerror or e}") from None
    h, w = x.shape[-2:]
    print(f"{out}: {len(data)} bytes, {len(data) * 8 / (h * w):.4f} bpp ({w}x{h} px, header included)")
    return 0


def cmd_export_nc(a: argparse.Namespace) -> int:
    """A model=hific checkpoint as a NeuralCompression `HiFiCAutoencoder` state dict."""
    from codecx.eval.load import load_codec
    from codecx.models.hific import state_to_nc
    from codecx.quantizers.scalar import ScalarQuantizer

    codec, config = load_codec(a.checkpoint)
    if len(codec.transforms) or not isinstance(codec.quantizer, ScalarQuantizer):
        raise ValueError(f"{a.checkpoint}: its codec has latent transforms or a non-scalar quantizer "
                         f"({type(codec.quantizer).__name__}), which a HiFiCAutoencoder cannot hold")
    state = state_to_nc(codec.backbone)
    out = Path(a.output)
    torch.save(state, out)
    m = config["model"]
    print(f"{out}: HiFiCAutoencoder(latent_features={m.get('M', 220)}, hyper_features={m.get('N', 320)}, "
          f"num_residual_blocks={m.get('num_residual_blocks', 9)}) state dict, {len(state)} tensors")
    return 0


def known_methods() -> dict:
    """The method names a codecx header may carry: the options of conf/quantizer, conf/transform
    (decode-time transforms, comma-separated) and conf/shift (the latent shift's presets)."""
    from codecx.config.check import group_options
    from codecx.conf import CONF_DIR

    return {group: group_options(group, CONF_DIR) for group in ("quantizer", "transform", "shift")}


def cmd_decompress(a: argparse.Namespace) -> int:
    from codecx.coding.container import check_method_names, decode_image, unpack
    from codecx.eval.code import set_coding_threads
    from codecx.eval.load import fingerprint_of

    set_coding_threads(a.threads)
    p = Path(a.file)
    if not p.is_file():
        raise FileNotFoundError(f"{a.file}: no such file")
    data = p.read_bytes()
    opts = unpack(data)[0].options  # the method the encoder names (checked by the fingerprint)
    # names from the file choose config files: only known options, before anything is built
    check_method_names(opts, known_methods())
    transform, shift = (a.transform, a.shift) if a.transform or a.shift else (opts.get("transform"), opts.get("shift"))
    codec, config = load_method_codec(a.checkpoint, a.quantizer or opts.get("quantizer"), transform, shift=shift)
    x_hat, header = decode_image(codec, data, fingerprint_of(codec, config), a.max_pixels)
    out = Path(a.output or p.with_suffix(".png"))
    write_png(x_hat, out)
    print(f"{out}: {header.shape[1]}x{header.shape[0]} px from {len(data)} bytes")
    return 0


def cmd_bdrate(a: argparse.Namespace) -> int:
    from codecx.metrics.bdrate import bd_methods, load_results

    anchor, test = load_results(a.anchor), load_results(a.test)
    results, notes = bd_methods(anchor, test, a.metric, a.method, a.min_overlap)
    unit = "dB" if a.metric.startswith(("psnr", "ms-ssim")) else a.metric
    print(f"{test['name']} vs anchor {anchor['name']} on {a.metric} (Bjøntegaard, log rate):")
    for m, r in results.items():
        print(f"  {m:5s}  BD-rate {r.bd_rate:+.2f} %   BD-{'PSNR' if a.metric.startswith('psnr') else 'quality'} "
              f"{r.bd_psnr:+.3f} {unit}   (quality overlap {r.overlap:.0%})")
    for n in notes:
        print(f"  note: {n}")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from codecx.metrics.rdplot import plot_rd

    out = plot_rd(a.results, a.output, anchors=a.anchor or (), metrics=a.metric, title=a.title)
    print(f"wrote {out}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """BD figures of each ARM against BASELINE (codecx.compare) as text, markdown or CSV."""
    from codecx.compare import compare, load_arm, markdown, text, to_csv

    specs = [a.baseline, *a.arms]
    labels = a.label or []
    if len(labels) > len(specs):
        raise ValueError(f"--label given {len(labels)} times for {len(specs)} curves (BASELINE and each ARM)")
    arms = [load_arm(p, name=labels[i] if i < len(labels) else None) for i, p in enumerate(specs)]
    names = [x.name for x in arms]
    if len(set(names)) < len(names):
        raise ValueError(f"two curves are both named {next(n for n in names if names.count(n) > 1)!r}: "
                         "name them with --label (one per curve, BASELINE first)")
    rows = compare(arms[0], arms[1:], per_image=a.per_image)
    show = to_csv if a.csv else markdown if a.markdown else text
    print(show(rows, per_image=a.per_image), end="" if a.csv else "\n")
    if a.figures:
        from codecx.metrics.rdplot import plot_comparison

        paths = plot_comparison(rows, arms[0], arms[1:], a.figures)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from codecx.eval.code import set_coding_threads
    from codecx.eval.report import build_report

    set_coding_threads(a.threads)
    lpips = fid = None
    if a.lpips_weights:  # the files are asked for: a missing one is an error, not a skipped column
        from codecx.metrics.lpips import LPIPSMetric

        lpips = LPIPSMetric(net="alex", weights=a.lpips_weights, option="--lpips-weights")
    if a.fid_weights:
        from codecx.metrics.fid import FIDKID

        fid = FIDKID(weights=a.fid_weights, option="--fid-weights")
    paths = build_report(a.multirun_dir, a.baseline, a.out, a.eval_dir, a.data_val_dir,
                         progress=not a.no_progress, replicates=a.replicates, anchor=a.anchor,
                         include_incomplete=a.include_incomplete, decompose=a.decompose, lpips=lpips, fid=fid)
    print(paths["md"].read_text())
    figures = [str(paths[k]) for k in ("png", "delta", "bars") if k in paths]
    print(f"wrote {paths['md']}, {paths['csv']} and {', '.join(figures)}")
    return 0


def anchor_outputs(output: Optional[str], directory: str, codecs: List[str]) -> dict:
    """{codec: JSON path} of `codecx anchors`: OUT.json itself for one codec, OUT-<codec>.json
    for several (default: <DIR name>-<codec>.json in the current folder)."""
    if output is None:
        return {c: Path(f"{Path(directory).resolve().name}-{c}.json") for c in codecs}
    out = Path(output)
    if len(codecs) == 1:
        return {codecs[0]: out}
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {c: stem.parent / f"{stem.name}-{c}.json" for c in codecs}


def cmd_anchors(a: argparse.Namespace) -> int:
    """Classical RD curves (Pillow JPEG / WebP / AVIF) of an image folder as results JSON."""
    import json

    from codecx.data.datamodule import list_images
    from codecx.metrics.anchors import CLASSICAL, classical_anchor

    codecs = [c.strip().lower() for c in a.codec.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CLASSICAL]
    if not codecs or unknown:
        raise ValueError(f"--codec {a.codec}: choose from {', '.join(CLASSICAL)} (comma-separated); "
                         "JPEG XL needs a Pillow plugin that is not installed")
    qualities = None
    if a.qualities:
        try:
            qualities = [int(q) for q in a.qualities.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"--qualities {a.qualities}: expected integers, e.g. 5,10,20,40,80") from None
        if not qualities or any(not 0 <= q <= 100 for q in qualities):
            raise ValueError(f"--qualities {a.qualities}: each must be in 0..100")
    if not Path(a.dir).is_dir():
        raise FileNotFoundError(f"{a.dir}: no such folder (a folder of images, e.g. Kodak's PNGs)")
    files = list_images(a.dir, a.dir)
    if a.max_images:
        files = files[: a.max_images]
    if not files:
        raise ValueError(f"{a.dir}: no image files in it")
    images = [(p.name, read_image(p)) for p in files]
    for codec, path in anchor_outputs(a.output, a.dir, codecs).items():
        res = classical_anchor(images, codec, qualities)
        res["description"] += f" from {Path(a.dir).resolve()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        r = res["results"]
        print(f"{path}: {codec}, {len(r['bpp'])} RD points, {r['bpp'][0]:.3f}-{r['bpp'][-1]:.3f} bpp, "
              f"{r['psnr-rgb'][0]:.2f}-{r['psnr-rgb'][-1]:.2f} dB on {len(images)} image(s)")
    return 0


#: verbs that hand the rest of the command line to a Hydra main: verb -> module with `main()`
HYDRA_VERBS = {"train": "codecx.train", "eval": "codecx.eval.main"}


def run_hydra_verb(verb: str, args: List[str]) -> int:
    """`codecx train|eval ARGS`: run the Hydra main of `HYDRA_VERBS[verb]` on ARGS (overrides,
    `-m` sweeps, `--cfg job`, `--help`, ...) as `python -m codecx.train ARGS` would."""
    import importlib
    import importlib.util

    import __main__

    module = HYDRA_VERBS[verb]
    argv, spec = sys.argv, getattr(__main__, "__spec__", None)
    # Hydra reads its arguments from sys.argv[1:]; Lightning's DDP launcher starts its workers
    # as `python -m <__main__.__spec__.name> sys.argv[1:]`: both must see `-m MODULE ARGS`
    sys.argv = [f"codecx {verb}", *args]
    __main__.__spec__ = importlib.util.find_spec(module)
    try:
        importlib.import_module(module).main()
    finally:
        sys.argv, __main__.__spec__ = argv, spec
    return 0


def cmd_complexity(a: argparse.Namespace) -> int:
    """KMACs per pixel of each stage of a backbone (Yang & Mandt 2023's complexity axis)."""
    import json

    from codecx.metrics.complexity import build_model, complexity_table, kmacs_per_pixel, parameter_counts

    overrides = {k: v for k, v in (("N", a.N), ("M", a.M)) if v is not None}
    for item in a.set or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected KEY=VALUE (e.g. --set residual=false)")
        overrides[key] = yaml_value(value)
    model = build_model(a.model, **overrides)
    h, w = a.size
    if a.json:
        print(json.dumps({"model": a.model, **overrides, "input": [h, w], "kmacs_per_pixel":
                          kmacs_per_pixel(model, h, w), "parameters": parameter_counts(model)}, indent=2))
    else:
        print(complexity_table(a.model, model, h, w))
    return 0


def yaml_value(text: str):
    """A command-line value as YAML reads it (false -> False, 12 -> 12, null -> None)."""
    import yaml

    return yaml.safe_load(text)


def build_parser() -> argparse.ArgumentParser:
    """The `codecx` argument parser (one subcommand per verb)."""
    p = argparse.ArgumentParser(prog="codecx", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def verb(name: str, fn, help: str, threads: Optional[str] = None) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(func=fn)
        if threads:
            s.add_argument("--threads", type=int, default=1 if threads == "1" else None, help=(
                "torch threads (default 1; decode with the same number as the encoder: the thread "
                "count can change the last bits of the transforms)" if threads == "1" else
                "torch threads (default: the idle cores, at least 1)"))
        return s

    for name, what in (("train", "train a codec: Hydra overrides of codecx/conf/train.yaml, -m for sweeps"),
                       ("eval", "real-bitstream evaluation: Hydra overrides of codecx/conf/eval.yaml")):
        s = sub.add_parser(name, help=what, description=f"{what} (`codecx {name} --help`: Hydra's help)",
                           add_help=False)
        s.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. model=mbt lmbda=0.013")

    s = sub.add_parser("train-labeler", add_help=False,
                       help="train the MS-ILLM VQ-VAE labeler for reg=illm (`codecx train-labeler --help`)")
    s.add_argument("args", nargs=argparse.REMAINDER)

    s = verb("compress", cmd_compress, "encode an image into a codecx file", threads="1")
    s.add_argument("image", help="image file (PNG, JPEG, ...)")
    s.add_argument("-c", "--checkpoint", required=True, help="train.py checkpoint (last.ckpt)")
    s.add_argument("-o", "--output", help="codecx file to write (default: IMAGE.cdcx)")
    s.add_argument("--quantizer", help="quantizer option of conf/quantizer instead of the checkpoint's "
                                       "(hex, oct, d4: lattice VQ, no retraining); named in the header")
    s.add_argument("--transform", help="decode-time latent transform(s) of conf/transform added to the "
                                       "checkpoint's, comma-separated (latent_shift); named in the header")
    s.add_argument("--shift", help="a preset of the latent_shift transform, of conf/shift (latent: "
                                   "--transform latent_shift; latent_fast, latent_side, sign, scalar); "
                                   "named in the header")
    s.add_argument("--refine", help="encoder refiner(s) of conf/refine, comma-separated (e.g. sga); "
                                    "the decoder needs nothing: the file format is unchanged")
    s.add_argument("--max-pixels", type=int, default=2**28,
                   help="refuse larger images (default 2**28 pixels, the decoder's cap); images needing "
                        "more memory than is free are refused whatever the cap")

    s = verb("decompress", cmd_decompress, "decode a codecx file into a PNG", threads="1")
    s.add_argument("file", help="codecx file")
    s.add_argument("-c", "--checkpoint", required=True, help="the checkpoint that encoded it")
    s.add_argument("-o", "--output", help="PNG to write (default: FILE.png)")
    s.add_argument("--quantizer", help="override the quantizer named in the file's header")
    s.add_argument("--transform", help="override the decode-time transforms named in the file's header")
    s.add_argument("--shift", help="override the latent shift preset named in the file's header")
    s.add_argument("--max-pixels", type=int, default=2**28,
                   help="refuse files whose header claims a larger image (default 2**28 pixels)")

    s = verb("export-nc", cmd_export_nc, "write a model=hific checkpoint as a NeuralCompression "
             "HiFiCAutoencoder state dict (MS-ILLM's released layout; model.weights= loads it back)")
    s.add_argument("checkpoint", help="train.py checkpoint of a model=hific codec (last.ckpt)")
    s.add_argument("-o", "--output", required=True, help="file to write (torch.save of the state dict)")

    s = verb("bdrate", cmd_bdrate, "BD-rate and BD-PSNR of TEST against ANCHOR")
    s.add_argument("anchor", help="results JSON (CompressAI layout) or a packaged anchor name")
    s.add_argument("test", help="results JSON (CompressAI layout) or a packaged anchor name")
    s.add_argument("--metric", default="psnr-rgb", help="quality metric (psnr-rgb, ms-ssim; default psnr-rgb)")
    s.add_argument("--method", default="both", choices=["pchip", "cubic", "both"],
                   help="interpolation (default both; cubic needs >= 4 points per curve)")
    s.add_argument("--min-overlap", type=float, default=0.5, help="warn below this quality overlap")

    s = verb("plot", cmd_plot, "RD plot (PSNR and MS-SSIM vs bpp) of results files")
    s.add_argument("results", nargs="+", help="results JSON files (or packaged anchor names)")
    s.add_argument("-o", "--output", default="rd.png", help="PNG to write (default rd.png)")
    s.add_argument("--anchor", action="append", help="packaged anchor drawn dashed (repeatable), e.g. mbt2018-mean")
    s.add_argument("--metric", nargs="+", default=["psnr-rgb", "ms-ssim"], help="metrics (one subplot each)")
    s.add_argument("--title", default="")

    s = verb("compare", cmd_compare, "BD-rate / BD-PSNR of each ARM against BASELINE (pchip, cubic, "
             "MS-SSIM), from eval.py or codecx report result folders")
    s.add_argument("baseline", help="a folder with results.json (and per_image.csv), a folder of such run "
                   "folders (merged into one curve), a results JSON, or a packaged anchor name")
    s.add_argument("arms", nargs="+", metavar="ARM", help="the curves to compare, given as BASELINE")
    s.add_argument("--per-image", action="store_true", help="add the per-image band: each image's own "
                   "BD-rate against the baseline's, mean ± t·SE (95%%), from per_image.csv")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a markdown table")
    fmt.add_argument("--csv", action="store_true", help="print CSV (unrounded figures)")
    s.add_argument("--label", action="append", metavar="NAME", help="a curve's name (repeatable: "
                   "BASELINE first, then each ARM; default: the folder's name)")
    s.add_argument("--figures", metavar="DIR", help="also write rd.png, delta_psnr.png (PSNR minus the "
                   "baseline's at equal rate) and bd_rate.png (BD-rate bars) to DIR")

    s = verb("report", cmd_report, "BD-rate table and RD plot of a Hydra multirun (train.py -m)",
             threads="idle")
    s.add_argument("multirun_dir", help="the multirun folder (e.g. runs/sweep/NAME)")
    s.add_argument("--baseline", required=True, help="KEY=VALUE[,KEY=VALUE] picking the baseline group, e.g. reg=none")
    s.add_argument("--eval-dir", help="where per-run results.json are read / written (default: each run dir)")
    s.add_argument("--data-val-dir", help="evaluate every run on this image folder (full images) "
                                          "instead of the run's own validation data")
    s.add_argument("-o", "--out", help="folder for report.md, report.csv, rd.png (default: MULTIRUN_DIR)")
    s.add_argument("--replicates", metavar="KEY", help="an override that repeats the experiment (e.g. "
                   "seed): BD figures become means over its values, paired with the baseline's, and the "
                   "baseline row shows the noise band between them")
    s.add_argument("--anchor", metavar="NAME|PATH", help="a reference curve drawn dashed in rd.png, with "
                   "each group's BD-rate / BD-PSNR against it in a column: a packaged CompressAI curve "
                   "(mbt2018-mean, ...), a results JSON (e.g. from codecx anchors), or jpeg / webp / avif "
                   "computed on the evaluation images")
    s.add_argument("--include-incomplete", action="store_true", help="use runs whose last.ckpt stopped "
                   "before trainer.max_steps in the curves and BD figures (default: flagged and left out)")
    s.add_argument("--decompose", action="store_true", help="evaluate with the MSE_t / MSE_a / MSE_q "
                   "decomposition (eval.py metrics.decompose=true; Rethinking Latent Variable (WACV 2026) eq. 11): "
                   "its section and plot")
    s.add_argument("--lpips-weights", metavar="PATH", help="evaluate LPIPS (AlexNet) with this torchvision "
                   "alexnet file or folder (eval.py metrics.lpips.weights); nothing is downloaded")
    s.add_argument("--fid-weights", metavar="PATH", help="evaluate FID / KID on 256-px patches with this "
                   "torch-fidelity Inception file or folder (eval.py metrics.fid.weights)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = verb("anchors", cmd_anchors, "classical RD curves (Pillow JPEG / WebP / AVIF, bpp from the "
             "encoded files) of an image folder, as CompressAI-layout results JSON")
    s.add_argument("dir", help="image folder (PNG, JPEG, ...; searched recursively)")
    s.add_argument("--codec", default="jpeg,webp", help="comma-separated: jpeg, webp, avif (default jpeg,webp)")
    s.add_argument("--qualities", help="Pillow quality settings, e.g. 5,10,20,40,80 (default: a dense "
                                       "ladder per codec; settings that add no rate-quality point are dropped)")
    s.add_argument("--max-images", type=int, help="only the first N images (sorted by path)")
    s.add_argument("-o", "--output", help="results JSON (several codecs: OUT-<codec>.json; default "
                                          "<DIR name>-<codec>.json); use it with codecx plot / bdrate, "
                                          "codecx report --anchor, eval.anchor=PATH")

    s = verb("complexity", cmd_complexity, "KMACs per pixel and parameters of each stage of a model")
    s.add_argument("model", help="a model config name (codecx/conf/model: mbt_mean, shallow, ...)")
    s.add_argument("--N", type=int, help="model.N")
    s.add_argument("--M", type=int, help="model.M")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another model option, e.g. --set residual=false --set analysis=cnn (repeatable)")
    s.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="input size counted on (default 256 256; padded to the model's stride)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run one verb; user errors print one line and exit 1 (CODECX_DEBUG=1 shows the traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HYDRA_VERBS:  # Hydra parses the rest itself (-m, --cfg, key=value)
        return run_hydra_verb(argv[0], argv[1:])
    if argv and argv[0] == "train-labeler":  # its own argparse (codecx.regularizers.labeler)
        from codecx.regularizers.labeler import main as train_labeler_main

        return train_labeler_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, MemoryError) as e:  # BitstreamError, CheckpointError, ...
        if os.environ.get("CODECX_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"codecx {args.cmd}: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - anything else is a bug, but still one line
        if os.environ.get("CODECX_DEBUG"):
            raise
        print(f"codecx {args.cmd}: error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(CODECX_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
