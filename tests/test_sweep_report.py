"""The report of a sweep written by Hydra's `on_multirun_end` callback (codecx.eval.sweep):
report.md in the sweep directory, and a W&B summary run (offline) holding it."""
from __future__ import annotations

import csv
import glob
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from codecx.config import register_configs
from codecx.eval.sweep import SweepReport
from codecx.train import CONF_DIR
from conftest import TINY, run_train


def wide_anchor(path: Path) -> Path:
    """A results JSON whose log10-rate is linear in PSNR over 0..80 dB: bpp = 1e-3 * 10^(PSNR/10)."""
    q = np.linspace(0.0, 80.0, 9)
    path.write_text(json.dumps({"name": "wide", "results": {"bpp": (1e-3 * 10 ** (q / 10)).tolist(),
                                                            "psnr-rgb": q.tolist()}}))
    return path


def one_point_delta(bpp: float, psnr: float) -> float:
    """The analytic one-point BD-rate against `wide_anchor`."""
    return (bpp / (1e-3 * 10 ** (psnr / 10)) - 1) * 100


def _config(sweep_dir: Path, overrides=()):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(sweep_dir)
    return cfg


def _fake_sweep(root: Path, points) -> Path:
    """Run folders as a multirun leaves them (overrides.yaml, results.json), without training."""
    for overrides, (bpp, psnr) in points.items():
        d = root / ",".join(overrides)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (d / "results.json").write_text(json.dumps({"name": d.name, "results": {
            "bpp": [bpp], "psnr-rgb": [psnr], "bpp_est": [bpp], "ms-ssim": [None]}, "images": [1]}))
    return root


def _rows(sweep: Path):
    with (sweep / "report.csv").open() as f:
        return {r["group"]: r for r in csv.DictReader(f)}


def test_callback_writes_the_report_with_baseline_and_anchor(tmp_path):
    """on_multirun_end with a composed train config: BD-rate of a group against the baseline
    group (`reg:none` spelling) and every group against the anchor."""
    pts = {("reg=none", "lmbda=0.001"): (0.10, 28.0), ("reg=none", "lmbda=0.01"): (0.40, 33.0),
           ("reg=cse", "lmbda=0.001"): (0.09, 28.0), ("reg=cse", "lmbda=0.01"): (0.36, 33.0)}
    sweep = _fake_sweep(tmp_path / "sweep", pts)
    anchor = wide_anchor(tmp_path / "anchor.json")
    cfg = _config(sweep, ["sweep_report.baseline=reg:none", f"sweep_report.anchor={anchor}"])
    SweepReport().on_multirun_end(cfg)
    rows = _rows(sweep)
    # the cse curve is the baseline's at 90% of the rate everywhere: BD-rate -10%
    assert float(rows["reg=cse"]["bd_rate_pchip"]) == pytest.approx(-10.0, abs=0.01)
    assert rows["reg=none (baseline)"]["anchor_bd_rate"] and rows["reg=cse"]["anchor_bd_rate"]
    md = (sweep / "report.md").read_text()
    assert "BD-rate % vs wide (pchip)" in md and "## Anchor" in md
    assert (sweep / "rd.png").is_file()


def test_callback_one_point_groups_and_failures(tmp_path, caplog):
    """Groups of one RD point get the one-point BD-rate against the anchor; a report that cannot
    be built is a warning, never an error; enabled=false writes nothing."""
    sweep = _fake_sweep(tmp_path / "sweep", {("seed=1",): (0.2, 20.0), ("seed=2",): (0.3, 25.0)})
    anchor = wide_anchor(tmp_path / "anchor.json")
    cfg = _config(sweep, [f"sweep_report.anchor={anchor}"])
    SweepReport().on_multirun_end(cfg)
    rows = _rows(sweep)
    assert float(rows["seed=1 (baseline)"]["anchor_bd_rate"]) == pytest.approx(one_point_delta(0.2, 20.0), abs=0.005)
    assert float(rows["seed=2"]["anchor_bd_rate"]) == pytest.approx(one_point_delta(0.3, 25.0), abs=0.005)
    assert float(rows["seed=2"]["anchor_bd_psnr"]) == pytest.approx(25.0 - 10 * math.log10(300), abs=0.001)
    (sweep / "report.md").unlink()
    SweepReport().on_multirun_end(_config(sweep, ['sweep_report.baseline="reg=foo"']))
    assert not (sweep / "report.md").exists()
    assert "sweep report of" in caplog.text and "reg=foo" in caplog.text
    SweepReport().on_multirun_end(_config(sweep, ["sweep_report.enabled=false"]))
    assert not (sweep / "report.md").exists()
    # a run still training (its last.ckpt newer than any final results.json): no report yet
    ckpt = next(sweep.glob("seed=2/")) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    SweepReport().on_multirun_end(cfg)
    assert not (sweep / "report.md").exists()
    assert re.search(r"1 run\(s\) have no final evaluation yet .*: seed=2", caplog.text)


def wandb_summary(run_file: Path) -> dict:
    """The summary values of an offline W&B run, read from its run-*.wandb file (LevelDB log
    records of wandb's protobuf `Record`)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, off, records, part = run_file.read_bytes(), 7, [], b""  # 7-byte file header
    while off + 7 <= len(data):
        if 32768 - off % 32768 < 7:  # block trailer
            off += 32768 - off % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[off:off + 7])
        chunk, off = data[off + 7:off + 7 + length], off + 7 + length
        if kind == 0:
            break
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            records.append(part)
    out = {}
    for raw in records:
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                out[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    return out


@pytest.mark.slow  # two real training runs and a W&B process
def test_tiny_multirun_leaves_report_and_wandb_summary(tmp_path):
    sweep = tmp_path / "sweep"
    anchor = wide_anchor(tmp_path / "anchor.json")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_API_KEY": "",
           "NETRC": str(tmp_path / "no-netrc")}
    # two configurations (groups by what each run used; seeds would be pooled as replicates)
    r = run_train(["-m", *TINY, "trainer.max_steps=2", "eval.every_n_steps=0", "quantizer=noise,ste",
                   f"eval.anchor={anchor}", "logger=wandb", f"hydra.sweep.dir={sweep}"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sweep report" in r.stdout and (sweep / "report.md").is_file(), r.stdout[-2000:] + r.stderr[-2000:]
    md = (sweep / "report.md").read_text()
    assert "BD-rate % vs wide (pchip)" in md
    rows = _rows(sweep)
    expected = {}
    for f in sweep.glob("*/.hydra/overrides.yaml"):
        res = json.loads((f.parent.parent / "results.json").read_text())
        assert res["step"] == 2  # the final evaluation of training, reused by the report
        group = next(o.strip("- ") for o in f.read_text().splitlines() if "quantizer=" in o)
        label = next(g for g in rows if g.split(" ")[0] == group)
        expected[label] = one_point_delta(res["results"]["bpp"][0], res["results"]["psnr-rgb"][0])
        assert float(rows[label]["anchor_bd_rate"]) == pytest.approx(expected[label], abs=0.005)
        assert f"| {rows[label]['anchor_bd_rate']} |" in md
    assert len(expected) == 2
    # the W&B summary run of the sweep: the table and the BD figures
    runs = sorted(glob.glob(str(sweep / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(runs) == 1, sorted(str(p) for p in sweep.rglob("*.wandb"))
    summary = wandb_summary(Path(runs[0]))
    for label, value in expected.items():
        assert summary[f"{label.replace(' (baseline)', '')}/anchor_bd_rate"] == pytest.approx(value, abs=0.005)
    assert "BD-rate % vs wide" in summary["report_md"]
    table = json.loads(next(Path(runs[0]).parent.glob("files/media/table/report/*.table.json")).read_text())
    assert "anchor_bd_rate" in table["columns"] and len(table["data"]) == 2
