"""Eval-time latent transforms (issue 30 item 2): the latent shift is a latent transform that never
runs in training, added at decode time (eval.py transform=[latent_shift], codecx compress
--transform); stages declare their header options, report columns and summary metrics; files and
configs of before keep decoding."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from codecx.conf import CONF_DIR
from codecx.coding.container import codec_fingerprint, decode_image, encode_image, unpack
from codecx.config import group_option
from codecx.eval.load import codec_from_config, fingerprint_of
from codecx.inference.latent_shift import LatentShift
from codecx.metrics.rd import to_uint8
from codecx.quantizers.channels import Relaxed
from codecx.transforms.base import LatentTransform, declared

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data"
#: the tiny codec of tests/data/latent_shift_*.cdcx (made by codecx d803b83, before issue 30 item 2,
#: with eval.py's `shift=latent` / `shift=latent_side` nodes: torch.manual_seed(0), g_a's last
#: layer x5, a 64-px torch.rand image of seed 3, header options {"shift": NAME} as the CLI wrote)
MODEL = {"_target_": "codecx.models.backbones.MbtMean", "name": "mbt_mean", "N": 8, "M": 12, "weights": None,
         "scale_levels": 256}
QUANTIZER = {"_target_": "codecx.quantizers.NoiseQuantizer"}


def _codec(transform=None):
    torch.manual_seed(0)
    codec = codec_from_config(MODEL, QUANTIZER, transform)
    with torch.no_grad():
        codec.backbone.g_a[-1].weight.mul_(5)
    codec.eval().update(force=True)
    return codec


def _image():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("old", ["latent", "latent_side"])
def test_files_written_with_the_shift_slot_decode_identically(old):
    """A codecx file of the pre-issue-30 shift slot decodes to the same image with the shift as a
    transform (same fingerprint), and the same image codes to the same bytes."""
    meta = json.loads((DATA / "latent_shift_files.json").read_text())[old]
    plain = _codec()
    if fingerprint_of(plain, {"model": MODEL, "quantizer": QUANTIZER}).hex() != meta["plain_fingerprint"]:
        pytest.skip("this torch initialises the tiny model differently from the one that wrote the file")
    transform = group_option("shift", old, CONF_DIR)  # {"latent_shift": node}: a preset of the transform
    new = "latent_shift"
    codec = _codec(transform)
    fp = fingerprint_of(codec, {"model": MODEL, "quantizer": QUANTIZER, "transform": transform})
    assert fp.hex() == meta["fingerprint"]
    data = (DATA / f"latent_shift_{old}.cdcx").read_bytes()
    x_hat, header = decode_image(codec, data, fp)
    assert header.options == meta["options"] and header.options["shift"] == old
    assert hashlib.sha256(to_uint8(x_hat).to(torch.uint8).numpy().tobytes()).hexdigest() == meta["decoded_sha256"]
    assert encode_image(codec, _image(), fp, {"shift": old}) == data
    # a config of before (its `shift` node) builds the same codec and fingerprint
    legacy = {"model": MODEL, "quantizer": QUANTIZER, "shift": transform[new]}
    torch.manual_seed(0)
    assert fingerprint_of(codec, legacy) == fp


def test_fingerprint_parts_are_those_of_before():
    """A trained transform enters the fingerprint under `transform`, the latent shift alone under
    its declared `shift` (the layout of files written before issue 30)."""
    bias = {"bias": {"_target_": "codecx.transforms.bias.ChannelBias"}}
    shift = group_option("transform", "latent_shift", CONF_DIR)
    codec = _codec({**bias, **shift})
    assert [type(t).__name__ for t in codec.transforms] == ["ChannelBias", "LatentShift"]
    got = fingerprint_of(codec, {"model": MODEL, "quantizer": QUANTIZER, "transform": {**bias, **shift}})
    parts = {"model": {k: v for k, v in MODEL.items() if k != "weights"}, "quantizer": QUANTIZER,
             "shift": shift["latent_shift"], "transform": bias}
    assert got == codec_fingerprint(codec, parts)
    with pytest.raises(ValueError, match="a codec holds one"):
        two = {**shift, "again": shift["latent_shift"]}
        fingerprint_of(_codec(two), {"model": MODEL, "quantizer": QUANTIZER, "transform": two})


def test_eval_only_transform_does_not_run_in_training():
    """The Relaxed (training) walk skips the shift: its output equals the codec's without it,
    the same noise drawn; the eval walk runs it."""
    shift = LatentShift("latent", [0.0, 0.5])
    codec, plain = _codec(), _codec()
    codec.add_transforms(shift)
    assert not shift.in_training and declared(codec, "header_options") == ("shift_index", "side_shift_index")
    x = _image()
    outs = []
    for c in (codec, plain):
        c.train()
        torch.manual_seed(1)
        outs.append(c.walk(Relaxed(c.quantizer), x))
    assert torch.equal(outs[0].x_hat, outs[1].x_hat) and torch.equal(outs[0].y_hat, outs[1].y_hat)
    assert "shift_index" not in outs[0].metrics
    codec.eval()
    plain.eval()
    with torch.no_grad():
        shifted = codec(x)
    assert int(shifted.metrics["shift_index"]) == 1  # a step of 0.5 changes the image
    assert not torch.equal(shifted.x_hat, plain(x).x_hat)


class _Undeclared(LatentTransform):
    """Signals a header option it does not declare."""

    in_training = False
    signals = True

    def forward(self, y_hat, state):
        if state.encoder_side:
            state.options["secret"] = 1
        return y_hat


def test_declarations_drive_the_container_and_the_report():
    """The container refuses an option no stage declares; a transform's report columns come
    from the header; every option the configured transforms and refiners declare fits a header."""
    from hydra.utils import instantiate

    from codecx.coding.options import encode_options
    from codecx.config.check import group_options
    from codecx.eval.code import measure

    codec = _codec()
    codec.add_transforms(_Undeclared())
    with pytest.raises(ValueError, match="secret.*declares"):
        encode_image(codec, _image(), bytes(8))
    _Undeclared.header_options = ("secret",)
    try:
        assert unpack(encode_image(codec, _image(), bytes(8)))[0].options == {"secret": 1}
    finally:
        del _Undeclared.header_options
    for group in ("transform", "refine"):
        for name in group_options(group, CONF_DIR):
            for node in group_option(group, name, CONF_DIR).values():
                stage = instantiate(node)
                assert set(stage.report_columns) >= set(stage.header_options) or group == "refine"
                encode_options({k: 1 for k in stage.header_options})
    # the evaluator iterates over the declared columns and metrics
    shift = _codec(group_option("shift", "latent_side", CONF_DIR))
    assert declared(shift, "summary_metrics") == ("grad_corr",)
    row, _ = measure(shift, _image(), grad_corr=True)
    assert {"shift_index", "side_shift_index", "grad_corr"} <= set(row)


@pytest.mark.medium
def test_eval_transform_option_and_the_old_shift_option(tiny_ckpt):
    """eval.py transform=[latent_shift] adds the shift after the checkpoint's transforms;
    shift=latent is the same codec and fingerprint; a transform with trained state cannot be
    added at decode time."""
    from hydra import compose, initialize_config_dir

    from codecx.config import register_configs
    from codecx.eval.checkpoint import CheckpointError
    from codecx.eval.load import load_codec
    from codecx.eval.main import codecs

    register_configs()
    prints = []
    for overrides in (["transform=[latent_shift]"], ["shift=latent"]):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("eval", overrides=[f"ckpt={tiny_ckpt}", *overrides])
        (_, codec, config), = list(codecs(cfg))
        assert [type(t).__name__ for t in codec.transforms] == ["LatentShift"]
        prints.append(fingerprint_of(codec, config))
    assert prints[0] == prints[1]
    with pytest.raises(CheckpointError, match="bias: it has trained state"):
        load_codec(tiny_ckpt, transform=group_option("transform", "bias", CONF_DIR))
