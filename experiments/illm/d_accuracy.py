"""Held-out discriminator accuracy, the results table and the reconstruction figure of the CPU-scale
GAN study (experiments/illm/README.md; MS-ILLM, Muckley et al. ICML 2023; HiFiC, Mentzer et al. 2020).

For every arm (stage 1 and the stage-2 arms none / patchgan / illm) the codec decodes the same
Kodak center crops in eval mode (the decoder's exact pipeline); the stage-2 encoders are the
stage-1 encoder (frozen), so `y_hat` is the same in every arm and only `x_hat` differs. Each trained
discriminator (loaded from its arm's checkpoint, eval mode) classifies the real crops and the
reconstructions of every arm:
  - patchgan: per patch, real if the logit > 0;
  - illm: per 1/8 position, "fake" if the argmax of the C+1 logits is class 0, "real" otherwise
    (any of the C real classes; the label accuracy on real crops, argmax == u(x)+1, is also given).
Accuracy = 0.5 (real crops called real + reconstructions called fake), on the arm's own
reconstructions; the cross table gives the fraction of each arm's reconstructions called fake.
The rate/fidelity columns come from eval.py's results.json / per_image.csv (real bitstreams).

  python experiments/illm/d_accuracy.py --runs runs/illm --kodak ../shared/data/kodak --out experiments/illm
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from PIL import Image, ImageDraw

from codecx.data.datamodule import ImageFolderDataset
from codecx.evaluate import load_checkpoint, load_codec

ARMS = {"stage1": "stage1", "none": "stage2/none", "patchgan": "stage2/patchgan", "illm": "stage2/illm"}
D_ARMS = ("patchgan", "illm")
# the none arm again with seed 2 (study.sh noise): its difference to none is the protocol's noise band
NOISE_ARM = ("none_seed2", "stage2/none_seed2")


def load_discriminator(ckpt_path: Path, codec):
    """The regularizer of a stage-2 checkpoint with its trained discriminator (eval mode)."""
    ckpt = load_checkpoint(ckpt_path)
    reg = instantiate(dict(ckpt["codecx_config"]["reg"]))
    reg.attach(codec)
    marker = "discriminator."
    state = {k[k.index(marker) + len(marker):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("regularizers.") and marker in k}
    if not state:
        raise ValueError(f"{ckpt_path}: no discriminator weights in the checkpoint")
    reg.discriminator.load_state_dict(state)
    reg.discriminator.eval()
    return reg


@torch.no_grad()
def fake_rate(reg, x, y_hat) -> float:
    """Fraction of D's decisions on images `x` that say "fake"."""
    logits = reg.discriminator(x, y_hat)
    if hasattr(reg, "labeler"):
        return float((logits.argmax(1) == 0).float().mean())
    return float((logits <= 0).float().mean())


@torch.no_grad()
def illm_label_acc(reg, x, y_hat) -> float:
    """ILLM D on real crops: fraction of positions whose argmax is the labeler's class u(x)+1."""
    return float((reg.discriminator(x, y_hat).argmax(1) == reg.labels(x) + 1).float().mean())


def eval_row(run_dir: Path):
    """Means and per-image values (dict image -> row) of an eval.py run."""
    res = json.loads((run_dir / "results.json").read_text())["results"]
    with open(run_dir / "per_image.csv") as f:
        per = {r["image"]: r for r in csv.DictReader(f)}
    return {k: v[0] for k, v in res.items() if isinstance(v, list) and v}, per


def paired(per_a, per_b, key):
    """Mean and standard error of the per-image difference a - b."""
    d = [float(per_a[i][key]) - float(per_b[i][key]) for i in per_a if i in per_b]
    d = [v for v in d if math.isfinite(v)]
    m = sum(d) / len(d)
    se = math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
    return m, se


def figure(crops, recon, names, out: Path, picks, size=128):
    """Side by side: original and each arm's reconstruction of `size`-px crops of `picks`."""
    cols = ["original", *ARMS]
    W, H, top = size * len(cols), (size + 2) * len(picks), 14
    img = Image.new("RGB", (W, H + top), "white")
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(cols):
        draw.text((j * size + 3, 1), c, fill="black")
    for r, (i, (oy, ox)) in enumerate(picks):
        for j, c in enumerate(cols):
            t = crops[i] if c == "original" else recon[c][i]
            t = t[:, oy:oy + size, ox:ox + size].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            img.paste(Image.fromarray(t), (j * size, top + r * (size + 2)))
    img.save(out, optimize=True)
    return [names[i] for i, _ in picks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/illm")
    ap.add_argument("--kodak", default="../shared/data/kodak")
    ap.add_argument("--out", default="experiments/illm")
    ap.add_argument("--crop", type=int, default=256, help="center crop of each Kodak image (as eval.py's)")
    a = ap.parse_args(argv)
    runs, out = Path(a.runs), Path(a.out)
    torch.set_num_threads(1)
    ds = ImageFolderDataset(a.kodak, crop_size=a.crop, train=False, name="--kodak")
    names = [p.name for p in ds.paths]
    crops = [ds[i] for i in range(len(ds))]
    recon, y_hats, codecs = {}, {}, {}
    arms = dict(ARMS)
    if (runs / NOISE_ARM[1] / "checkpoints" / "last.ckpt").is_file():
        arms[NOISE_ARM[0]] = NOISE_ARM[1]
    for arm, sub in arms.items():
        codec, _ = load_codec(runs / sub / "checkpoints" / "last.ckpt")
        codecs[arm] = codec
        with torch.no_grad():
            outs = [codec(x[None]) for x in crops]
        recon[arm] = [o.x_hat[0].clamp(0, 1).mul(255).round().div(255) for o in outs]  # 8-bit, as decoded
        y_hats[arm] = [o.y_hat for o in outs]
    same_y = all(torch.equal(y_hats["stage1"][i], y_hats[arm][i]) for arm in arms for i in range(len(crops)))

    d_stats, cross = {}, {}
    for darm in D_ARMS:
        reg = load_discriminator(runs / arms[darm] / "checkpoints" / "last.ckpt", codecs[darm])
        y = y_hats[darm]
        real_fake = sum(fake_rate(reg, crops[i][None], y[i]) for i in range(len(crops))) / len(crops)
        cross[darm] = {arm: sum(fake_rate(reg, recon[arm][i][None], y[i]) for i in range(len(crops))) / len(crops)
                       for arm in arms}
        st = {"real_called_real": 1 - real_fake, "own_fakes_called_fake": cross[darm][darm],
              "accuracy": 0.5 * ((1 - real_fake) + cross[darm][darm])}
        if darm == "illm":
            st["real_label_acc"] = sum(illm_label_acc(reg, crops[i][None], y[i]) for i in range(len(crops))) / len(crops)
            st["chance_label_acc"] = 1.0 / reg.labeler.codebook_size
        d_stats[darm] = st

    rows, per = {}, {}
    for arm in arms:
        rows[arm], per[arm] = eval_row(runs / "eval" / arms[arm].replace("/", "_"))
    deltas = {arm: {k: paired(per[arm], per["none"], k) for k in ("psnr-rgb", "ms-ssim", "hf_ratio")}
              for arm in ("patchgan", "illm", "stage1", NOISE_ARM[0]) if arm in arms}
    shown = figure(crops, recon, names, out / "recon.png", picks=[(12, (64, 64)), (22, (64, 0))])

    result = {"images": f"{len(crops)} Kodak images, {a.crop}-px center crops", "same_y_hat_in_every_arm": same_y,
              "eval": rows, "discriminator": d_stats, "fake_rate_cross": cross, "paired_vs_none": deltas,
              "figure": {"file": "recon.png", "crops": shown}}
    (out / "results.json").write_text(json.dumps(result, indent=2))

    L = ["| arm | bpp | PSNR dB | MS-SSIM | hf_ratio | D accuracy (held-out) | FID | LPIPS |",
         "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        r = rows[arm]
        acc = f"{d_stats[arm]['accuracy']:.3f}" if arm in d_stats else "n/a (no D)"
        L.append(f"| {arm} | {r['bpp']:.4f} | {r['psnr-rgb']:.2f} | {r['ms-ssim']:.4f} | {r['hf_ratio']:.3f} | "
                 f"{acc} | n/a: no weights | n/a: no weights |")
    L += ["", "Paired differences against `none` (mean over images ± standard error):", "",
          "| arm | ΔPSNR dB | ΔMS-SSIM | Δhf_ratio |", "|---|---|---|---|"]
    for arm, d in deltas.items():
        L.append(f"| {arm} | " + " | ".join(f"{m:+.3f} ± {se:.3f}" if k != "ms-ssim" else f"{m:+.4f} ± {se:.4f}"
                                             for k, (m, se) in d.items()) + " |")
    L += ["", "Discriminators on held-out Kodak crops (fraction of decisions; patchgan per patch, illm per 1/8 "
          "position):", "", "| D | real called real | own fakes called fake | accuracy | extra |", "|---|---|---|---|---|"]
    for darm, st in d_stats.items():
        extra = (f"label acc on real {st['real_label_acc']:.3f} (chance {st['chance_label_acc']:.3f})"
                 if "real_label_acc" in st else "")
        L.append(f"| {darm} | {st['real_called_real']:.3f} | {st['own_fakes_called_fake']:.3f} | "
                 f"{st['accuracy']:.3f} | {extra} |")
    L += ["", "Fraction of each arm's reconstructions a discriminator calls fake (lower: more realistic to it):", "",
          "| D \\ reconstructions of | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for darm, c in cross.items():
        L.append(f"| {darm} | " + " | ".join(f"{c[arm]:.3f}" for arm in arms) + " |")
    L += ["", f"y_hat identical in every arm (frozen encoder): {same_y}"]
    (out / "results.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
