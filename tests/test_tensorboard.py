"""TensorBoard gets what W&B gets (issue 31 item 5): runs of a sweep compare in TensorBoard's
HParams view (read back through TensorBoard's own hparams backend), and the sweep report is a
TensorBoard run with its table, figures and BD figures. The training run's scalars,
reconstructions and RD figures: tests/test_dashboards.py::test_tensorboard_config_images_lr_and_extra_callback."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image


def hparams_experiment(logdir: Path):
    """The experiment TensorBoard's HParams view shows for `logdir`: (hparam names, metric tags)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider))
    rc = context.RequestContext()
    exp = ctx.experiment_from_metadata(rc, "", True, ctx.hparams_metadata(rc, ""),
                                       ctx.hparams_from_data_provider(rc, "", None))
    return {h.name for h in exp.hparam_infos}, {m.name.tag for m in exp.metric_infos}


def test_hparams_view_unites_the_runs_of_a_sweep(tmp_path):
    """Two runs with different settings (one has a key the other lacks): the HParams view lists
    every key of both and their val/* scalars as metrics, where Lightning's own records (one
    experiment record per run, hp_metric) show only the first run's keys and hp_metric."""
    from pytorch_lightning.loggers import TensorBoardLogger

    from codecx.lit.loggers import tensorboard_hparams

    runs = [{"quantizer": "noise", "lmbda": 0.01}, {"quantizer": "ste", "lmbda": 0.02, "reg.cse.alpha": 0.1}]
    for i, params in enumerate(runs):
        for how in ("codecx", "lightning"):
            lg = TensorBoardLogger(save_dir=str(tmp_path / how / f"run{i}"), name="tb", version="")
            if how == "codecx":
                tensorboard_hparams(lg, params)
            else:
                lg.log_hyperparams(params)
            lg.log_metrics({"val/psnr": 30.0 + i, "val/bpp": 0.3}, step=5)
            lg.finalize("success")
    names, metrics = hparams_experiment(tmp_path / "codecx")
    assert names == {"quantizer", "lmbda", "reg.cse.alpha"} and metrics == {"val/psnr", "val/bpp"}
    names, metrics = hparams_experiment(tmp_path / "lightning")
    assert names != {"quantizer", "lmbda", "reg.cse.alpha"} and metrics == {"hp_metric"}  # the defect fixed


def test_sweep_report_for_tensorboard(tmp_path):
    """logger=tensorboard: the sweep report as the run tb/report of the sweep directory: report.md
    as text, rd_plot / delta_psnr / bd_rate images, each group's BD figures as scalars."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    from codecx.eval.sweep import SweepReport
    from test_sweep_report import _config, _fake_sweep

    pts = {("reg=none", "lmbda=0.001"): (0.10, 28.0), ("reg=none", "lmbda=0.01"): (0.40, 33.0),
           ("reg=cse", "lmbda=0.001"): (0.09, 28.0), ("reg=cse", "lmbda=0.01"): (0.36, 33.0),
           ("reg=cse2", "lmbda=0.001"): (0.11, 28.0), ("reg=cse2", "lmbda=0.01"): (0.44, 33.0)}
    sweep = _fake_sweep(tmp_path / "sweep", pts)
    SweepReport().on_multirun_end(_config(sweep, ["sweep_report.baseline=reg:none", "logger=tensorboard"]))
    files = list((sweep / "tb" / "report").glob("events.out.tfevents.*"))
    assert len(files) == 1
    images, texts, scalars = {}, [], {}
    for event in map(Event.FromString, RawEventFileLoader(str(files[0])).Load()):
        for v in event.summary.value:
            if v.HasField("image"):
                images[v.tag] = Image.open(io.BytesIO(v.image.encoded_image_string)).size
            elif v.metadata.plugin_data.plugin_name == "text":
                texts.append(v.tag)
            elif v.HasField("simple_value"):
                scalars[v.tag] = v.simple_value
    assert {"report/rd_plot", "report/delta_psnr", "report/bd_rate"} <= set(images)
    assert texts == ["report/report_md/text_summary"]
    assert scalars["report/reg=cse/bd_rate_pchip"] == pytest.approx(-10.0, abs=0.01)
    assert scalars["report/reg=cse2/bd_rate_pchip"] == pytest.approx(10.0, abs=0.01)
