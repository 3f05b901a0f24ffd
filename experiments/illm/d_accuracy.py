"""Labeler statistics, held-out discriminator accuracy, the results tables and the figure of the
CPU-scale GAN study (experiments/illm/README.md; MS-ILLM, Muckley et al. ICML 2023, arXiv
2301.11189; HiFiC, Mentzer et al. 2020, arXiv 2006.09965).

Every arm's codec decodes the same Kodak center crops in eval mode; the stage-2 encoders are the
stage-1 encoder (frozen), so `y_hat` is the same in every arm and only `x_hat` differs. Each trained
discriminator (loaded from its arm's checkpoint, eval mode, conditioned as in training) classifies
the real crops and its own arm's reconstructions:
  - patchgan: per patch, real if the logit > 0;
  - illm: per 1/8 position, P(fake) = softmax(logits)[0]; "fake" if P(fake) > 1/2 (the binary
    real/fake decision); the OASIS argmax rule ("fake" if class 0 is the argmax of the C+1
    logits) is given beside it: with C uncertain label classes it says "fake" whenever no label
    is confident, even at P(fake) < 1/2. Label accuracy on real crops: argmax over the C real
    classes == u(x)+1, against the label-frequency baseline (always the most frequent label).
Accuracy = 0.5 (real crops called real + own reconstructions called fake).

  python experiments/illm/d_accuracy.py labeler runs/illm2/labeler.pt   # code usage, perplexity, MSE
  python experiments/illm/d_accuracy.py diag runs/illm2/diag/*          # D accuracy of runs (few steps)
  python experiments/illm/d_accuracy.py report --runs runs/illm2 --out experiments/illm
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image, ImageDraw

from codecx.compare import deltas, load_arm
from codecx.data.datamodule import ImageFolderDataset
from codecx.eval.checkpoint import load_checkpoint
from codecx.eval.load import load_codec
from codecx.regularizers.labeler import load_labeler

# arm -> run folder under --runs (eval.py's output: eval/<arm>); the arms of every seed run so far
SEEDS = (1, 2, 3)
GROUPS = {g: tuple(f"{g}_s{s}" for s in SEEDS) for g in ("patchgan", "illm", "illm_bin", "illm_binw")}
ARMS = {"stage1": "stage1", **{f"none_s{s}": f"stage2/none_s{s}" for s in SEEDS},
        **{m: f"stage2/{m}" for members in GROUPS.values() for m in members}, "illm_noy_s1": "stage2/illm_noy_s1"}
D_ARMS = tuple(a for a in ARMS if a != "stage1" and not a.startswith("none_"))


def seed_of(arm: str) -> str:
    """The seed of a stage-2 arm's name (`illm_bin_s3` -> '3')."""
    return arm.rsplit("_s", 1)[1]
KEYS = ("psnr-rgb", "ms-ssim", "hf_ratio")


def tiles(t, size: int, stride: int = 1):
    """Non-overlapping `size`-px tiles of a (1, C, H, W) tensor (`stride`: its pixels per image
    pixel's 1/stride, for y_hat at 1/16) as a list of (1, C, size/stride, size/stride)."""
    if size <= 0:
        return [t]
    k = size // stride
    return [t[..., i:i + k, j:j + k] for i in range(0, t.shape[-2] - k + 1, k)
            for j in range(0, t.shape[-1] - k + 1, k)]


def crops_of(kodak: str, crop: int, n: int = 0):
    ds = ImageFolderDataset(kodak, crop_size=crop, train=False, name="--kodak")
    idx = range(len(ds) if n <= 0 else min(n, len(ds)))
    return [ds.paths[i].name for i in idx], [ds[i] for i in idx]


# ------------------------------------------------------------------------------------ labeler
@torch.no_grad()
def labeler_stats(lab, crops, tile: int = 0) -> dict:
    """Code usage, perplexity exp(H(u)), the most frequent label's share (the label-frequency
    baseline) and the reconstruction MSE against the pixel variance, on `tile`-px tiles of the crops."""
    labels, mse, var = [], [], []
    for x in [t[0] for c in crops for t in tiles(c[None], tile)]:
        out = lab(x[None])
        labels.append(out["indices"].flatten())
        mse.append(float(F.mse_loss(out["x_hat"].clamp(0, 1), x[None])))
        var.append(float(x.var(dim=(1, 2)).mean()))
    u = torch.cat(labels)
    p = torch.bincount(u, minlength=lab.codebook_size).double() / u.numel()
    nz = p[p > 0]
    return {"codebook_size": lab.codebook_size, "codes_used": int((p > 0).sum()),
            "perplexity": float(torch.exp(-(nz * nz.log()).sum())), "top_label_share": float(p.max()),
            "mse": sum(mse) / len(mse), "crop_variance": sum(var) / len(var), "positions": int(u.numel()),
            "tile": tile or "whole crop"}


# ------------------------------------------------------------------------------ discriminators
def load_regularizer(ckpt_path: Path, codec):
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


def is_illm(reg) -> bool:
    return hasattr(reg, "labeler")


@torch.no_grad()
def d_maps(reg, x, y_hat) -> dict:
    """Per-position decisions of D on images `x`: P(fake) and the fake/real calls."""
    if is_illm(reg):
        logits = reg.discriminate(x, y_hat)
        p_fake = logits.softmax(1)[:, 0]
        return {"p_fake": p_fake, "fake": p_fake > 0.5, "fake_argmax": logits.argmax(1) == 0,
                "label": logits[:, 1:].argmax(1)}
    logits = reg.discriminator(x, y_hat)
    return {"p_fake": torch.sigmoid(-logits), "fake": logits <= 0}


def mean(v):
    v = list(v)
    return sum(v) / len(v)


@torch.no_grad()
def d_stats(reg, crops, y_hats, fakes, tile: int = 0) -> dict:
    """Held-out real/fake accuracy of D (real crops vs `fakes`, the reconstructions of its own arm),
    on `tile`-px tiles (the training crop size) of the crops."""
    s = getattr(reg, "latent_stride", 16)
    crops = [t[0] for c in crops for t in tiles(c[None], tile)]
    fakes = [t[0] for c in fakes for t in tiles(c[None], tile)]
    y_hats = [t for y in y_hats for t in tiles(y, tile, s)]
    real = [d_maps(reg, x[None], y) for x, y in zip(crops, y_hats)]
    fake = [d_maps(reg, x[None], y) for x, y in zip(fakes, y_hats)]
    rr = mean(float((~m["fake"]).float().mean()) for m in real)
    ff = mean(float(m["fake"].float().mean()) for m in fake)
    st = {"real_called_real": rr, "fakes_called_fake": ff, "accuracy": 0.5 * (rr + ff),
          "p_fake_real": mean(float(m["p_fake"].mean()) for m in real),
          "p_fake_fake": mean(float(m["p_fake"].mean()) for m in fake)}
    if is_illm(reg):
        rr_a = mean(float((~m["fake_argmax"]).float().mean()) for m in real)
        ff_a = mean(float(m["fake_argmax"].float().mean()) for m in fake)
        u = [reg.labels(x[None]) for x in crops]
        st.update({"argmax_real_called_real": rr_a, "argmax_fakes_called_fake": ff_a,
                   "argmax_accuracy": 0.5 * (rr_a + ff_a),
                   "label_acc_real": mean(float((m["label"] == lab).float().mean()) for m, lab in zip(real, u)),
                   "label_baseline": float(torch.bincount(torch.cat([lab.flatten() for lab in u])).max())
                   / sum(lab.numel() for lab in u),
                   "condition": bool(getattr(reg, "condition", True))})
    return st


@torch.no_grad()
def reconstruct(ckpt: Path, crops):
    """(codec, 8-bit reconstructions, y_hats) of the crops by the checkpoint's codec (eval mode)."""
    codec, _ = load_codec(ckpt)
    outs = [codec(x[None]) for x in crops]
    return codec, [o.x_hat[0].clamp(0, 1).mul(255).round().div(255) for o in outs], [o.y_hat for o in outs]


def d_line(name, st) -> str:
    s = (f"{name}: real->real {st['real_called_real']:.3f} fake->fake {st['fakes_called_fake']:.3f} "
         f"acc {st['accuracy']:.3f} (P(fake) real {st['p_fake_real']:.3f} fake {st['p_fake_fake']:.3f})")
    if "label_acc_real" in st:
        s += (f"; argmax rule acc {st['argmax_accuracy']:.3f}; label acc {st['label_acc_real']:.3f} "
              f"(baseline {st['label_baseline']:.3f})")
    return s


# ------------------------------------------------------------------------------------- report
def eval_row(run_dir: Path):
    """Means and per-image values (dict image -> row) of an eval.py run."""
    res = json.loads((run_dir / "results.json").read_text())["results"]
    with open(run_dir / "per_image.csv") as f:
        per = {r["image"]: r for r in csv.DictReader(f)}
    return {k: v[0] for k, v in res.items() if isinstance(v, list) and v}, per


def figure(crops, recon, names, out: Path, cols, picks, size=128):
    """Side by side: original and each arm's reconstruction of `size`-px crops of `picks`."""
    cols = ["original", *cols]
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


def fmt(m, h, key):
    return f"{m:+.4f} ± {h:.4f}" if key == "ms-ssim" else f"{m:+.3f} ± {h:.3f}"


def report(a) -> int:
    runs, out = Path(a.runs), Path(a.out)
    names, crops = crops_of(a.kodak, a.crop)
    arms = {k: v for k, v in ARMS.items() if (runs / v / "checkpoints" / "last.ckpt").is_file()}
    recon, y_hats, codecs = {}, {}, {}
    for arm, sub in arms.items():
        codecs[arm], recon[arm], y_hats[arm] = reconstruct(runs / sub / "checkpoints" / "last.ckpt", crops)
    same_y = all(torch.equal(y_hats["stage1"][i], y_hats[arm][i]) for arm in arms for i in range(len(crops)))
    lab = labeler_stats(load_labeler(runs / "labeler.pt"), crops, a.tile)

    d_st, cross = {}, {}
    for darm in (d for d in D_ARMS if d in arms):
        reg = load_regularizer(runs / arms[darm] / "checkpoints" / "last.ckpt", codecs[darm])
        y = y_hats[darm]
        d_st[darm] = d_stats(reg, crops, y, recon[darm], a.tile)
        cross[darm] = {arm: d_stats(reg, crops, y, recon[arm], a.tile)["fakes_called_fake"] for arm in arms}
        print(d_line(darm, d_st[darm]), flush=True)

    rows, per = {}, {}
    for arm in arms:
        src = runs / "eval" / arm
        rows[arm], per[arm] = eval_row(src)
        dst = out / "results" / arm
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("per_image.csv", "results.json"):
            shutil.copyfile(src / f, dst / f)

    # paired differences through the comparison API (codecx.compare.deltas): seeds pair with the
    # baseline's same seed, per image the mean over the pairs, mean ± t·SE over the images
    def arm_of(name, members):
        return load_arm(name=name, replicates={seed_of(m): runs / "eval" / m for m in members})

    none_seeds = [m for m in (f"none_s{s}" for s in SEEDS) if m in arms]
    none = arm_of("none", none_seeds)
    others = ", ".join(seed_of(m) for m in none_seeds[1:])
    comps = {f"none seed{'s' * (len(none_seeds) > 2)} {others} - none seed 1 (noise band)": (none, True)}
    for g, seeds in GROUPS.items():
        have = [s for s in seeds if s in arms]
        for s in have:
            comps[f"{s} - none_s{seed_of(s)}"] = (arm_of(g, [s]), False)
        if len(have) > 1:
            comps[f"{g} - none (seeds {', '.join(seed_of(s) for s in have)})"] = (arm_of(g, have), False)
    if "illm_noy_s1" in arms:
        comps["illm_noy_s1 - none_s1"] = (arm_of("illm_noy", ["illm_noy_s1"]), False)
    comps[f"stage1 - none (seeds {', '.join(seed_of(m) for m in none_seeds)}, per-image mean)"] = (
        load_arm(runs / "eval" / "stage1", name="stage1"), False)
    paired = {}
    for name, (arm_, is_base) in comps.items():
        d = deltas(none, arm_, KEYS, is_base=is_base)
        paired[name] = {k: (v.mean, v.band, v.n, v.each) for k, v in d.items()}

    cols = [c for c in ("stage1", "none_s1", "patchgan_s1", "illm_s1", "illm_noy_s1", "illm_bin_s1",
                        "illm_binw_s1") if c in arms]
    shown = figure(crops, recon, names, out / "recon.png", cols, picks=[(12, (64, 64)), (22, (64, 0))])
    result = {"images": f"{len(crops)} Kodak images, {a.crop}-px center crops", "same_y_hat_in_every_arm": same_y,
              "labeler": lab, "eval": rows, "discriminator": d_st, "fake_rate_cross": cross,
              "paired": {n: {k: {"mean": m, "band": h, "n": c, "each": [[pair, x] for pair, x in e]}
                             for k, (m, h, c, e) in v.items()} for n, v in paired.items()},
              "figure": {"file": "recon.png", "columns": ["original", *cols], "crops": shown}}
    (out / "results.json").write_text(json.dumps(result, indent=2))

    L = [f"Labeler on the {a.tile or a.crop}-px tiles of the {len(crops)} Kodak crops: "
         f"{lab['codes_used']}/{lab['codebook_size']} codes used, "
         f"perplexity {lab['perplexity']:.1f}, most frequent label {lab['top_label_share']:.3f} of "
         f"{lab['positions']} positions; reconstruction MSE {lab['mse']:.4f} (crop pixel variance "
         f"{lab['crop_variance']:.4f})", "",
         "| arm | bpp | PSNR dB | MS-SSIM | hf_ratio | D accuracy (held-out) | FID | LPIPS |",
         "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        r = rows[arm]
        acc = f"{d_st[arm]['accuracy']:.3f}" if arm in d_st else "n/a (no D)"
        L.append(f"| {arm} | {r['bpp']:.4f} | {r['psnr-rgb']:.2f} | {r['ms-ssim']:.4f} | {r['hf_ratio']:.4f} | "
                 f"{acc} | n/a: no weights | n/a: no weights |")
    L += ["| *paper, CLIC2020 0.12 bpp, no GAN (released results)* | | *31.99* | | | | *6.56* | |",
          "| *paper, CLIC2020 0.12 bpp, MS-ILLM (released; Table 1: 30.9 / 2.65)* | | *30.87* | | | | *2.65* | |",
          "", f"Paired differences (codecx.compare.deltas: per image, seeds paired, mean ± t_0.975·SE over "
          f"{len(crops)} images):", "",
          "| comparison | ΔPSNR dB | ΔMS-SSIM | Δhf_ratio | ΔPSNR dB by seed pair |", "|---|---|---|---|---|"]
    for name, v in paired.items():
        each = v["psnr-rgb"][3]
        by_seed = ", ".join(f"{lab}: {x:+.3f}" for lab, x in each) if len(each) > 1 else ""
        L.append(f"| {name} | " + " | ".join(fmt(*v[k][:2], k) for k in KEYS) + f" | {by_seed} |")
    L += ["", f"Discriminators on {a.tile or a.crop}-px tiles of the held-out Kodak crops (fractions of decisions; "
          "patchgan per patch, illm per 1/8 position, fake if P(fake) > 1/2; the argmax rule beside it):", "",
          "| D | real called real | own fakes called fake | accuracy | mean P(fake) real / fake | "
          "argmax-rule accuracy | label acc on real | label-frequency baseline |",
          "|---|---|---|---|---|---|---|---|"]
    for darm, st in d_st.items():
        ex = (f"{st['argmax_accuracy']:.3f} | {st['label_acc_real']:.3f} | {st['label_baseline']:.3f}"
              if "label_acc_real" in st else "n/a | n/a | n/a")
        L.append(f"| {darm} | {st['real_called_real']:.3f} | {st['fakes_called_fake']:.3f} | {st['accuracy']:.3f} | "
                 f"{st['p_fake_real']:.3f} / {st['p_fake_fake']:.3f} | {ex} |")
    L += ["", "Fraction of each arm's reconstructions a discriminator calls fake (lower: more realistic to it):", "",
          "| D \\ reconstructions of | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for darm, c in cross.items():
        L.append(f"| {darm} | " + " | ".join(f"{c[arm]:.3f}" for arm in arms) + " |")
    L += ["", f"y_hat identical in every arm (frozen encoder): {same_y}"]
    (out / "results.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_lab = sub.add_parser("labeler", help="code usage, perplexity and MSE of a labeler on Kodak crops")
    p_lab.add_argument("path")
    p_diag = sub.add_parser("diag", help="held-out D accuracy of stage-2 run folders")
    p_diag.add_argument("runs", nargs="+")
    p_diag.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    p_rep = sub.add_parser("report", help="the study's tables, per-image CSVs and figure")
    p_rep.add_argument("--runs", default="runs/illm2")
    p_rep.add_argument("--out", default="experiments/illm")
    for p in (p_lab, p_diag, p_rep):
        p.add_argument("--kodak", default="../shared/data/kodak")
        p.add_argument("--crop", type=int, default=256, help="center crop of each Kodak image (as eval.py's)")
        p.add_argument("--n", type=int, default=0, help="first N Kodak images only (0: all)")
        p.add_argument("--tile", type=int, default=64,
                       help="D and labeler see non-overlapping tiles of this size "
                            "(the stage-2 training crop; 0: whole crops)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "report":
        return report(a)
    names, crops = crops_of(a.kodak, a.crop, a.n)
    if a.cmd == "labeler":
        st = labeler_stats(load_labeler(a.path), crops, a.tile)
        print(json.dumps(st))
        return 0
    for run in a.runs:
        ckpt = Path(run) / "checkpoints" / "last.ckpt"
        codec, rec, ys = reconstruct(ckpt, crops)
        st = d_stats(load_regularizer(ckpt, codec), crops, ys, rec, a.tile)
        print(d_line(run, st), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"run": run, "crops": f"{len(crops)} x {a.crop} px", **st}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
