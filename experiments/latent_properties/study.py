"""Latent properties study (arXiv 2501.01231): lattice VQ and latent shift on scalar-trained mbt_mean.

Evaluates one rate sweep of `train.py` checkpoints on Kodak with real bitstreams under each
decoder-side variant (no retraining), then tabulates the BD-rate of every variant against
scalar quantization next to the paper's table 1 / 4 / 5 figures for mbt2018-mean on Kodak.

    .venv/bin/python experiments/latent_properties/study.py            # all variants, then the table
    .venv/bin/python experiments/latent_properties/study.py --table    # the table from existing results

Checkpoints (default): the `reg=none, seed=1` runs of experiments/cse (experiment=cpu_study at
the 4 lambdas); `--runs GLOB` takes others (the base zoo: `--runs 'runs/zoo/mbt_mean/lmbda=*'
--steps 4000 --out experiments/latent_properties/zoo`). Results: `--out`/<variant>/.
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = "experiments/cse/runs/*reg=none,seed=1"
KODAK = "../shared/data/kodak"
OUT = HERE / "results"   # --out: where each variant's results go
# variant: (quantizer, shift); None = the checkpoint's own (scalar) quantizer / no shift
VARIANTS = {
    "scalar": (None, None), "hex": ("hex", None), "oct": ("oct", None), "d4": ("d4", None),
    "shift": (None, "latent"), "hex+shift": ("hex", "latent"), "sign shift": (None, "sign"),
    "shift (fast encoder)": (None, "latent_fast"),
    "scalar, 64-level tables": (None, None),  # CompressAI's CDF tables (eval scale_levels=64)
}
EXTRA = {"scalar, 64-level tables": ["scale_levels=64"]}
# the paper's mbt2018-mean Kodak figures (arXiv 2501.01231): BD-rate % (table 1, table 5) and BD-PSNR dB (tables 4, 5)
PAPER = {"hex": ("-0.88 (t.1), -0.748 (t.5)", "+0.0374"), "oct": ("-0.957 (t.5)", "+0.0480"),
         "d4": ("-", "-"), "shift": ("-1.27 (t.1)", "+0.0705 (t.4)"), "hex+shift": ("-2.24 (t.1)", "-"),
         "sign shift": ("-", "+0.0339 (t.4)"), "shift (fast encoder)": ("-", "-"),
         "scalar, 64-level tables": ("-", "-")}


def folder(variant: str) -> Path:
    name = variant.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
    return OUT / name


def evaluate(variant: str, ckpts, threads: int, data: str = KODAK) -> None:
    quantizer, shift = VARIANTS[variant]
    listing = ",".join(json.dumps(str(c)) for c in ckpts)  # quoted: run dirs contain '=' and ','
    cmd = [sys.executable, "eval.py", f"ckpt=[{listing}]", "data=folder", f"data.val_dir={data}",
           f"name={json.dumps(variant)}", f"threads={threads}", "progress=false",
           "metrics.grad_corr=true", f"hydra.run.dir={folder(variant).relative_to(ROOT)}"]
    cmd += [f"quantizer={quantizer}"] * bool(quantizer) + [f"shift={shift}"] * bool(shift)
    cmd += EXTRA.get(variant, [])
    print(f"== {variant}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def table() -> str:
    """The markdown table of every variant's BD figures against scalar (pchip and cubic) and
    against the 64-level scalar (codecx.compare), with the per-image band against scalar."""
    from codecx.compare import compare, load_arm

    ran = [v for v in VARIANTS if (folder(v) / "results.json").is_file()]
    arms = {v: load_arm(folder(v), name=v) for v in ran}
    rows = {r.name: r for r in compare(arms["scalar"], [arms[v] for v in ran if v != "scalar"], msssim=False)}
    p64 = "scalar, 64-level tables"  # the coder-matched baseline of the lattice coder
    rows64 = {r.name: r for r in compare(arms[p64], [arms[v] for v in ran if v != p64], per_image=False,
                                         methods="pchip", msssim=False)} if p64 in arms else {}
    lines = ["| variant | BD-rate % (pchip) | BD-rate % (cubic) | BD-PSNR dB (pchip) | BD-rate % vs 64-level "
             "scalar (pchip) | BD-rate % per image (± t·SE, 95%) | paper BD-rate % | paper BD-PSNR dB | mean bpp "
             "| mean PSNR dB | grad corr | "
             "enc s / img | dec s / img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in ran:
        row = rows[v]
        r = row.curve.results["results"]
        mean = lambda k: sum(r[k]) / len(r[k]) if r.get(k) and None not in r[k] else float("nan")  # noqa: E731
        if v == "scalar":
            cells = ["0 (baseline)", "0", "0"]
        else:
            b = row.values
            cells = [f"{b['bd_rate_pchip']:+.3f}", f"{b['bd_rate_cubic']:+.3f}" if "bd_rate_cubic" in b else "-",
                     f"{b['bd_psnr_pchip']:+.4f}"]
        cells.append(f"{rows64[v].values['bd_rate_pchip']:+.3f}" if rows64 and v != p64 else "-")
        cells.append("-" if v == "scalar" else str(row.per_image))
        paper = PAPER.get(v, ("-", "-"))
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {paper[0]} | {paper[1]} | {mean('bpp'):.4f} | "
                     f"{mean('psnr-rgb'):.3f} | {mean('grad_corr'):+.3f} | {mean('encoding_time'):.2f} | "
                     f"{mean('decoding_time'):.2f} |")
    return "\n".join(lines)


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=RUNS, help=f"glob of train.py run dirs (default {RUNS})")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="V")
    ap.add_argument("--steps", type=int, default=1200, help="steps a run must have finished (default 1200)")
    ap.add_argument("--data", default=KODAK, help=f"image folder (default {KODAK})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="only print the table of existing results")
    ap.add_argument("--out", default=str(OUT.relative_to(ROOT)), help="results folder (default %(default)s)")
    a = ap.parse_args()
    OUT = (ROOT / a.out).resolve()
    if not a.table:
        from codecx.eval.checkpoint import checkpoint_step

        ckpts = sorted(Path(d).relative_to(ROOT) / "checkpoints" / "last.ckpt" for d in glob.glob(str(ROOT / a.runs)))
        unfinished = [str(c) for c in ckpts if not (ROOT / c).is_file() or checkpoint_step(ROOT / c) < a.steps]
        if len(ckpts) < 2 or unfinished:
            raise SystemExit(f"{a.runs}: need >= 2 runs trained for {a.steps} steps; found {len(ckpts)}, "
                             f"unfinished: {unfinished}. Train them first: experiments/cse/train.sh 1")
        for v in a.variants:
            evaluate(v, ckpts, a.threads, a.data)
    text = table()
    (OUT / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
