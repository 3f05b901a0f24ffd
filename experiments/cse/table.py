"""The CSE study's BD tables from its committed Kodak results alone, through `codecx.compare`
(issue 31): every arm against the control `reg=none`, each seed paired with the control's same
seed (the control's row: seed 2 against seed 1, its noise band), with the per-image band.

    .venv/bin/python experiments/cse/table.py          # results/, ablation/results/, ablation/build2/ table.md
    .venv/bin/python experiments/cse/table.py seeds3   # ablation/seeds3/table.md (three seeds, issue 29)

- `results/table.md`: the first study (`kodak/`), the BD figures of `results/report.md`;
- `ablation/results/table.md`: the redo (`ablation/kodak/`), those of `ablation/results/report.md`
  (the two-lambda wide-bin arm left out, as in the report: `points.py` gives its points);
- `ablation/build2/table.md`: the replicate on the second zoo build against that build's control
  (`../latent_properties/finetune/control_scalar`, seed 1; its seed 2 is the noise band);
- `ablation/seeds3/table.md` (argument `seeds3`): the alpha=0.1 arms (per dimension in nats, bits
  per pixel) at three seeds on the zoo's third build (`../seeds3.sh`), each seed against the
  shared control's same seed
  (`../latent_properties/finetune/seeds3/control_scalar{,_seed2,_seed3}`), whose seeds 2 and 3
  against seed 1 are the band.

The reports (`codecx report`, which calls the same `compare`) need the trained runs; these tables
need only the committed `results.json` / `per_image.csv` (load_sweep groups the runs by the
overrides in their folder names).
"""
from __future__ import annotations

import sys
from pathlib import Path

from codecx.compare import compare, load_arm, load_sweep, markdown

HERE = Path(__file__).resolve().parent
CONTROL_BUILD2 = HERE.parent / "latent_properties" / "finetune"
CONTROL_SEEDS3 = CONTROL_BUILD2 / "seeds3"
SEEDS3 = HERE / "ablation" / "seeds3"


def write(out: Path, title: str, base, arms, source: str, msssim: bool = False) -> str:
    """`out`/table.md: the comparison of `arms` with `base` (markdown, per-image band); `msssim`:
    the same on MS-SSIM (dB) below it."""
    text = markdown(compare(base, arms))
    if msssim:
        text += ("\n\nOn MS-SSIM (dB): the BD figures and the per-image band with MS-SSIM as the quality\n\n"
                 + markdown(compare(base, arms, metric="ms-ssim")))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(
        f"# {title}\n\nBaseline `{base.name}`: each arm's BD figures against the baseline run of the same "
        "seed (the baseline's row, with two seeds: seed 2 against seed 1, its noise band); per image: each "
        "Kodak image's own BD-rate, mean ± t·SE (95%). Written by `experiments/cse/table.py` "
        f"(codecx.compare) from {source}.\n\n{text}\n")
    return text


def sweep(folder: Path, baseline: str, title: str, out: Path, where=None) -> str:
    """One `codecx report --eval-dir` folder: its control `baseline` against every other group."""
    arms = load_sweep(folder, where=where)
    base = arms.pop(baseline)
    return write(out, title, base, list(arms.values()),
                 f"`{folder.relative_to(HERE)}/*/results.json`, `per_image.csv`")


def seeds3(seeds=("1", "2", "3"), arms_dir: Path = SEEDS3, control_dir: Path = CONTROL_SEEDS3,
           out: Path = SEEDS3) -> str:
    """`out`/table.md: each CSE arm (`arms_dir/<units>_seed<s>`, those evaluated) at each seed
    against the shared control of the same seed (`control_dir/control_scalar` for seed 1,
    `control_scalar_seed<s>` for seed s); the control's seeds 2 and 3 against seed 1 are its band."""
    base = load_arm(name="control (third zoo build)", replicates={
        s: control_dir / ("control_scalar" if s == "1" else f"control_scalar_seed{s}") for s in seeds})
    arms = [load_arm(name=f"alpha=0.1,reg=cse,reg.units={units}",
                     replicates={s: arms_dir / f"{units}_seed{s}" for s in seeds})
            for units in ("nats_per_dim", "bpp") if (arms_dir / f"{units}_seed1" / "results.json").is_file()]
    return write(out, "CSE arms at three seeds (third zoo build)", base, arms,
                 "`ablation/seeds3/<units>_seed*/` and `../latent_properties/finetune/seeds3/control_scalar*/`",
                 msssim=True)


def main(which: str = "all") -> None:
    if which == "seeds3":
        print(seeds3())
        return
    print(sweep(HERE / "kodak", "alpha=1,reg=none", "CSE: alpha sweep against the control", HERE / "results"))
    print()
    print(sweep(HERE / "ablation" / "kodak", "reg=none", "CSE redo: rate units against the control",
                HERE / "ablation" / "results", where=lambda name: "reg.bin_width=" not in name))
    print()
    base = load_arm(name="control (second zoo build)", replicates={
        "1": CONTROL_BUILD2 / "control_scalar", "2": CONTROL_BUILD2 / "control_scalar_seed2"})
    arm = load_arm(name="alpha=0.1,reg=cse,reg.units=nats_per_dim",
                   replicates={"1": HERE / "ablation" / "build2" / "nats_per_dim"})
    print(write(HERE / "ablation" / "build2", "CSE replicate on the second zoo build", base, [arm],
                "`ablation/build2/nats_per_dim/` and `../latent_properties/finetune/control_scalar{,_seed2}/`",
                msssim=True))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
