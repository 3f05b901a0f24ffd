"""The compensation study's tables and figures from its committed Kodak results (`kodak/<run>/
results.json`, `per_image.csv`), through `codecx.compare` (issue 31): BD-rate / BD-PSNR (pchip,
cubic), the MS-SSIM BD-rate and the per-image band of every arm against the control of the same
seed (the control's seed 2 against seed 1: its seed band), and the same against the
inverse-training control; with rd.png, delta_psnr.png (PSNR minus the control's at equal rate),
bd_rate.png, rdc.png and decomposition.png beside each table.

    .venv/bin/python experiments/compensation/table.py            # results/table.md, results/invert/table.md
    .venv/bin/python experiments/compensation/table.py seeds3     # seeds3/results/table.md (three seeds)

The run folders are named as Hydra named them (codecx.config.schema.run_name: the sorted
overrides, long names cut and hashed), so each arm's folders are found from its overrides:
PROTOCOL + lmbda + seed + the arm's overrides, as in study.sh. The committed results hold all
20 cells of the first run, the four null arms included (README).
"""
from __future__ import annotations

import sys
from pathlib import Path

from codecx.compare import Arm, compare, load_curve, markdown
from codecx.config.schema import run_name
from codecx.metrics.complexity import plot_rdc
from codecx.metrics.decompose import plot_decomposition
from codecx.metrics.rdplot import plot_comparison

HERE = Path(__file__).resolve().parent
KODAK = HERE / "kodak"
LMBDAS = ("0.0018", "0.0035", "0.0067", "0.013")
PROTOCOL = ("base_dir=runs_zoo_mbt_mean", "data.batch_size=4", "data.crop_size=256", "experiment=finetune",
            "quantizer=mixed", "schedule.group_lr.transforms=0.0005", "trainer.max_steps=500")
# each cell's transform overrides (with and without data.invert=True), as the first run wrote them
TRANSFORMS = (("transform=[]",), ("transform=latent_mse",), ("transform=lpc",), ("transform=lrp",), ("transform=fpc",),
              ("transform=lpc", "transform.lpc.params=predicted"), ("transform=lpc", "transform.lpc.latent_mse=1"),
              ("transform=lrp", "transform.lrp.latent_mse=1"), ("transform=fpc", "transform.fpc.latent_mse=1"),
              ("transform=lpc", "transform.lpc.params=predicted", "transform.lpc.latent_mse=1"))


def folders(overrides, seed: str, kodak: Path = KODAK):
    """The Kodak result folders of one arm and seed, one per lambda (none when not run)."""
    out = [kodak / run_name(",".join(sorted([*PROTOCOL, *overrides, f"lmbda={lm}", f"seed={seed}"])))
           for lm in LMBDAS]
    return out if all((f / "results.json").is_file() for f in out) else []


def label(overrides, invert: bool) -> str:
    """The arm's name as `codecx report` labels its group (results/report.md)."""
    return ",".join([f"data.invert={invert}", *sorted(overrides, key=lambda o: o.split("=")[0])])


def arms(kodak: Path = KODAK, seeds=("1", "2")) -> dict:
    """{label: Arm} of every cell with results in `kodak`, its `seeds` as replicates."""
    out = {}
    for invert in (False, True):
        for t in TRANSFORMS:
            overrides = [*t, *(["data.invert=True"] if invert else [])]
            reps = {s: load_curve(*f) for s in seeds if (f := folders(overrides, s, kodak))}
            if reps:
                out[label(t, invert)] = Arm(label(t, invert), reps)
    return out


def write(baseline: str, out: Path, title: str, kodak: Path = KODAK, seeds=("1", "2")) -> str:
    """table.md and the three figures of every arm against `baseline`, in `out`."""
    every = arms(kodak, seeds)
    base = every.pop(baseline)
    others = ", ".join(list(base.replicates)[1:]) or "2"
    rows = compare(base, list(every.values()))
    text = markdown(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(
        f"# {title}\n\nBaseline `{baseline}` (seeds {', '.join(base.replicates)}): each arm's BD figures "
        f"against the baseline run of the same seed (the baseline's row: seed {others} against seed 1, its seed "
        "band); per image: each Kodak image's own BD-rate, mean ± t·SE (95%). Written by "
        f"`experiments/compensation/table.py` (codecx.compare) from `{kodak.name}/*/results.json`, "
        "`per_image.csv`.\n\n" + text + "\n\n![RD curves](rd.png)\n\n"
        "![PSNR minus the baseline's at equal rate](delta_psnr.png)\n\n![BD-rate](bd_rate.png)\n")
    plot_comparison(rows, base, list(every.values()), out, title=title)
    curves = [dict(a.curve.results, name=a.name) for a in (base, *every.values())]  # seeds pooled
    plot_rdc(curves, out / "rdc.png", title=f"{title}: PSNR at matched rate vs decoder complexity")
    plot_decomposition(curves, out / "decomposition.png")
    return text


def main() -> None:
    if sys.argv[1:] == ["seeds3"]:  # the three-seed round (issue 29 item 2): control, lrp + latent MSE, fpc
        print(write("data.invert=False,transform=[]", HERE / "seeds3" / "results",
                    "compensation, three seeds: against the control", HERE / "seeds3" / "kodak", ("1", "2", "3")))
        return
    print(write("data.invert=False,transform=[]", HERE / "results", "compensation: against the control"))
    print()
    print(write("data.invert=True,transform=[]", HERE / "results" / "invert",
                "compensation: against the inverse-training control"))


if __name__ == "__main__":
    sys.exit(main())
