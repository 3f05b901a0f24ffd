"""Which scale table keys the lattice coder's PMF tables (issue 16): the model's own (the scalar
coder's) by default, or `quantizer.scale_levels=N`; exact round trips with each choice, a
finer table codes closer to the estimate, and the choice is part of the file's fingerprint."""
from __future__ import annotations

import math

import pytest
import torch
from compressai.entropy_models import GaussianConditional

from codecx.coding.lattice_coder import KEY_SCALES, LatticeTables, key_table
from codecx.quantizers import LatticeQuantizer
from codecx.types import EntropyParams

from conftest import gaussian_conditional

LATTICES = ["hex", "oct", "d4"]

pytestmark = pytest.mark.usefixtures("one_thread")


_gc = gaussian_conditional


def _latents(C=24, H=8, W=64, lo=0.11, hi=0.6, seed=0):
    """y ~ N(means, scales) exactly, scales log-uniform per (channel, row) (few distinct keys)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(1, C, H, 1).uniform_(math.log(lo), math.log(hi), generator=g))
    scales = scales.expand(1, C, H, W).contiguous()
    means = torch.randn(1, C, H, W, generator=g) * 3
    return means + scales * torch.randn(1, C, H, W, generator=g), scales, means


def _clear():
    LatticeTables._cache.clear()
    LatticeTables._cached_symbols = 0


def _round_trip(q, y, params):
    """(y_hat, decoded y_hat, stream bytes, encoder) with an empty table cache at the decoder."""
    enc = q.open_encoder(params.entropy_model)
    y_hat = q.encode(enc, y, params)
    data = enc.finish()
    _clear()
    y_dec = q.decode(q.open_decoder(params.entropy_model, data), params)
    return y_hat, y_dec, data, enc


def test_key_table_choices():
    gc = _gc(256)
    assert torch.equal(key_table(gc), gc.scale_table.float())  # the scalar coder's own table
    assert len(key_table(gc)) == 256
    assert torch.equal(key_table(gc, 64), KEY_SCALES)  # CompressAI's default: the first coder's keys
    assert len(key_table(gc, 1000)) == 1000
    with pytest.raises(ValueError, match="scale_levels=1"):
        LatticeQuantizer("hex", scale_levels=1)
    with pytest.raises(ValueError, match="update"):
        key_table(GaussianConditional(None))  # no table before update()


@pytest.mark.parametrize("name", LATTICES)
def test_keys_are_the_scalar_coders_indexes(name):
    """Each element of a group is keyed on the table scale CompressAI's scalar coder uses for
    it (`build_indexes`: the first table scale >= the lower-bounded scale)."""
    gc = _gc(256)
    q = LatticeQuantizer(name, "channel").eval()
    _, scales, _ = _latents(C=12, H=4, W=4, lo=0.05, hi=30.0)
    sigma = scales.movedim(1, -1)[..., : 12 // q.dim * q.dim].reshape(-1, q.dim)
    enc = q.open_encoder(gc)
    keys, order, counts, _ = enc._keys(sigma)
    per_group = torch.empty_like(sigma, dtype=torch.int64)
    for key, rows in zip(keys, torch.split(order, counts)):
        per_group[rows] = key
    assert torch.equal(per_group, gc.build_indexes(sigma).long())


@pytest.mark.parametrize("name", LATTICES)
@pytest.mark.parametrize("levels,model_levels", [(None, 256), (None, 64), (64, 256), (1024, 256)])
def test_exact_round_trip_with_each_table(name, levels, model_levels):
    gc = _gc(model_levels)
    q = LatticeQuantizer(name, scale_levels=levels).eval()
    y, scales, means = _latents(C=13, H=4, W=8, lo=0.05, hi=40.0, seed=1)  # joint, box, remainder
    params = EntropyParams(means, scales, gc)
    y_hat, y_dec, _, enc = _round_trip(q, y, params)
    assert torch.equal(y_dec, y_hat) and torch.equal(y_hat, q.hard(y, params))
    assert len(enc.key_scales) == (model_levels if levels is None else levels)


@pytest.mark.parametrize("name", LATTICES)
def test_finer_table_codes_closer_to_the_estimate(name):
    """Latents drawn from the predicted Gaussians: with the scalar coder's 256-level table the
    stream is within 1% of -log2 p (table rounding, PMF precision, escapes and the stream's
    flush together), and smaller than with CompressAI's 64-level table."""
    y, scales, means = _latents()
    q = LatticeQuantizer(name).eval()
    est = -q(y, EntropyParams(means, scales, _gc(256))).likelihoods.double().log2().sum().item()
    bits = {}
    for levels in (64, 256):
        y_hat, y_dec, data, _ = _round_trip(q, y, EntropyParams(means, scales, _gc(levels)))
        assert torch.equal(y_dec, y_hat)
        bits[levels] = 8 * len(data)
    assert bits[256] <= 1.01 * est, (bits, est)
    assert bits[256] < bits[64], bits


def test_table_choice_changes_the_fingerprint():
    """A decoder keyed on another table refuses the file: the quantizer's `scale_levels` (and
    the model's, which the default follows) are in the container fingerprint."""
    from codecx.coding.container import BitstreamError, decode_image, encode_image
    from codecx.eval.load import codec_from_config, fingerprint_of, prepare

    model = {"_target_": "codecx.models.backbones.MbtMean", "name": "mbt_mean", "N": 8, "M": 12}
    prints, codecs = [], []
    for model_levels, levels in ((256, None), (256, 64), (64, None)):
        quant = {"_target_": "codecx.quantizers.LatticeQuantizer", "lattice": "hex",
                 "scale_levels": levels}
        config = {"model": {**model, "scale_levels": model_levels}, "quantizer": quant}
        torch.manual_seed(0)
        codec = prepare(codec_from_config(config["model"], quant))
        codecs.append(codec)
        prints.append(fingerprint_of(codec, config))
    assert len(set(prints)) == 3
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = encode_image(codecs[0], x, prints[0])
    decode_image(codecs[0], data, prints[0])
    with pytest.raises(BitstreamError, match="fingerprint"):
        decode_image(codecs[1], data, prints[1])


def test_config_option():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from codecx.config import ConfigError, precheck
    from codecx.train import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        q = instantiate(compose("train", overrides=["quantizer=d4", "quantizer.scale_levels=64"]).quantizer)
        assert isinstance(q, LatticeQuantizer) and q.scale_levels == 64 and q.max_joint == 8192
        assert instantiate(compose("train", overrides=["quantizer=hex"]).quantizer).scale_levels is None
    with pytest.raises(ConfigError, match="quantizer.scale_levels: 'abc' is not an integer"):
        precheck(["quantizer=oct", "quantizer.scale_levels=abc"], CONF_DIR)
