"""The benchmark runner (`python -m benchmarks`): discovery, the summary table, tiny end-to-end runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks import Row, describe, discover, format_markdown, format_table, load  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402


def test_discovers_bench_modules():
    names = discover()
    assert "train_step" in names
    mod = load("train_step")
    assert callable(mod.run) and load("bench_train_step") is mod
    with pytest.raises(KeyError, match="available"):
        load("no_such_benchmark")


def test_discovers_cse():
    assert "cse" in discover()
    mod = load("cse")
    assert callable(mod.run) and callable(mod.add_arguments) and "reg=cse" in describe(mod)


def test_row_status_and_table():
    rows = [Row.of(("time ratio", 1.01, 1.03, "ratio"), "b"), Row("mem ratio", 1.2, 1.1, benchmark="b"),
            Row("step", 12.5, None, "ms", benchmark="b"), Row("speedup", 2.0, 1.5, higher_is_better=True)]
    assert [r.status for r in rows] == ["ok", "MISS", "-", "ok"]
    table = format_table(rows)
    assert "time ratio" in table and "MISS" in table and "≤ 1.030" in table
    assert format_markdown(rows).startswith("| benchmark |")


def test_list_and_unknown(capsys):
    assert main(["--list"]) == 0
    assert "train_step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--only", "no_such_benchmark"])


def _bench(name: str, *options: str, timeout: int = 600):
    """Run `python -m benchmarks --only NAME --quick --threads 1 OPTIONS`: (stdout, row) where
    row(metric) is that metric's line of the summary table."""
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--only", name, "--quick", "--threads", "1",
                        *options], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout[r.stdout.index("\nSummary"):].splitlines()
    return r.stdout, lambda metric: next(ln for ln in table if ln.split()[:1] == [name] and metric in ln)


@pytest.mark.slow
def test_train_step_tiny_end_to_end():
    """Both variants run, do the same work (equal losses) and the summary prints its ratios."""
    out, row = _bench("train_step", "--ts-N", "8", "--ts-M", "8", "--ts-crop", "64", "--ts-batch-size", "2")
    assert "step time ratio codecx/plain" in out and "peak memory ratio codecx/plain" in out
    line = row("loss max rel. diff")
    assert line.split()[-1] == "ok", line


@pytest.mark.slow
def test_cse_tiny_end_to_end():
    """reg=none and reg=cse both train from the same start and the summary prints the ratio."""
    out, row = _bench("cse", "--cse-N", "8", "--cse-M", "8", "--cse-crop", "64", "--cse-batch-size", "2")
    ratio = row("step time ratio cse/none")
    assert float(ratio.split("cse/none")[1].split()[0]) > 0, ratio
    assert "CPU time ratio cse/none" in out and "source model 'hyperprior'" in out
    same = row("step-1 R+lambda*D rel. diff")
    assert same.split()[-1] == "ok", same


def test_discovers_eval():
    assert "eval" in discover()
    mod = load("eval")
    assert callable(mod.run) and callable(mod.add_arguments)


@pytest.mark.slow
def test_eval_tiny_end_to_end():
    """A tiny trained model codes one crop both ways: same decoded images, all rows printed."""
    from benchmarks._trained import TRAIN_DATA

    if not TRAIN_DATA.is_dir():
        pytest.skip(f"{TRAIN_DATA} not found (the benchmark model's training photos)")
    out, row = _bench("eval", "--ev-N", "8", "--ev-M", "8", "--ev-crop", "64", "--ev-images", "1", timeout=900)
    for metric in ("encode speed codecx/compressai", "decode speed codecx/compressai",
                   "real/estimated bpp", "real/estimated bpp, streams only", "header+CRC bytes"):
        assert float(row(metric).split(metric)[1].split()[0]) > 0, row(metric)
    same = row("same work: decoded images differ")
    assert same.split()[-1] == "ok", same


def test_discovers_rate():
    assert "rate" in discover()
    mod = load("rate")
    assert callable(mod.run) and callable(mod.add_arguments) and "estimated bits" in describe(mod)


@pytest.mark.slow
def test_rate_tiny_end_to_end():
    """Both models (codecx's and the CompressAI-trained one, quick: a few steps) code one crop
    with the configs' quantizers, and the comparison rule is printed beside them, untargeted."""
    from benchmarks._trained import TRAIN_DATA

    if not TRAIN_DATA.is_dir():
        pytest.skip(f"{TRAIN_DATA} not found (the benchmark models' training photos)")
    out, row = _bench("rate", "--rate-quantizers", "noise,hex", "--rate-rules", "up", timeout=900)
    for model in ("codecx", "compressai"):
        for q in ("scalar", "hex"):
            line = row(f"{model}_{q}_real_vs_est")
            assert 0.9 < float(line.split(f"{model}_{q}_real_vs_est")[1].split()[0]) < 2, line
            assert "≤ 1.010" in line
            up = row(f"{model}_{q}_up_real_vs_est")
            assert "≤" not in up and up.split()[-1] == "-", up
    assert "(nearest)" in out and "(up)" in out


@pytest.mark.medium  # runs `python -m benchmarks` (a subprocess)
def test_compensation_bench_quick():
    """Every transform decodes the same streams; the rows are printed and cost no bits."""
    _, row = _bench("compensation")
    for metric in ("lrp_decode_time", "lpc_learned_decode_time", "lpc_predicted_decode_time", "fpc_decode_time"):
        assert float(row(metric).split()[2]) > 0, row(metric)
    assert row("stream_bytes_vs_none").split()[-1] == "ok", row("stream_bytes_vs_none")


def test_discovers_context():
    assert "context" in discover()
    mod = load("context")
    assert callable(mod.run) and callable(mod.add_arguments) and "mbt2018" in describe(mod)


@pytest.mark.medium
def test_context_bench_quick():
    """A small mbt codes one 128-px crop with codecx and CompressAI: the ratios are printed and
    the streams and decoded images are the same."""
    _, row = _bench("context", "--cx-N", "16", "--cx-M", "24")
    for metric in ("encode speed codecx/compressai", "decode speed codecx/compressai",
                   "mbt encode / mean-scale encode"):
        assert float(row(metric).split(metric)[1].split()[0]) > 0, row(metric)
    for metric in ("same work: streams differ", "same work: decoded images differ"):
        assert row(metric).split()[-1] == "ok", row(metric)


@pytest.mark.slow
def test_train_fast_tiny_end_to_end():
    """train_fast (issue 33 item 3): both configurations run paired with the eager plain loop,
    do the same work (equal losses) and report the compile warm-up and its pay-back."""
    out, row = _bench("train_fast", "--tf-N", "8", "--tf-M", "8", "--tf-crop", "64", "--tf-batch-size", "2")
    assert "torch.compile warm-up: first step" in out
    for config in ("channels_last", "channels_last+compile"):
        line = row(f"loss max rel. diff ({config} vs eager)")
        assert line.split()[-1] == "ok", line
    assert row("compile pays after") and row("step time ratio codecx channels_last+compile / plain eager")
