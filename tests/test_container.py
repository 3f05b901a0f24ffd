"""Tests for codecx.coding.container: the codecx file format, its errors and a fuzz loop."""

import random
import re
import struct
import zlib

import pytest
import torch

from codecx.coding.container import (
    MAGIC,
    BitstreamError,
    Header,
    codec_fingerprint,
    decode_image,
    encode_image,
    expected_latent_shapes,
    fingerprint,
    pack,
    safe_decompress,
    unpack,
)
from codecx.models import BACKBONES, Codec, build_backbone
from codecx.models.codec import pad_to
from codecx.quantizers import NoiseQuantizer
from conftest import tiny_backbone

CONFIG = {"model": {"name": "mbt_mean", "N": 8, "M": 8}, "quantizer": "noise"}
OPTIONS = {"quantizer": "noise", "shift_index": 0}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00@\x00\x00\x00@\x08\x02\x00\x00\x00"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: thread contention on a busy CPU makes tiny decodes 50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _codec(seed: int, backbone: str = "mbt_mean", quantizer=None) -> Codec:
    """A tiny codec (mbt_mean, scalar quantization by default); g_a's last layer is scaled so y
    takes a few hundred bytes."""
    torch.manual_seed(seed)
    codec = Codec(build_backbone(backbone, N=8, M=12 if quantizer else 8), quantizer or NoiseQuantizer()).eval()
    with torch.no_grad():
        codec.backbone.g_a[-1].weight.mul_(30)
    codec.update(force=True)
    return codec


@pytest.fixture(scope="module")
def real():
    """(codec, fingerprint, compress output, packed bytes) for a random 64x64 image."""
    codec = _codec(0)
    fp = codec_fingerprint(codec, CONFIG)
    out = codec.compress(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    data = pack(Header.from_output(out, fp, OPTIONS), out["strings"][0])
    return codec, fp, out, data


def _recrc(data: bytes) -> bytes:
    """Replace the trailing CRC32 so it matches the (altered) body."""
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]))


def test_round_trip_real_stream(real):
    codec, fp, out, data = real
    header, streams = unpack(data, fp)
    assert streams == out["strings"][0] and len(streams[0]) > 100
    assert (header.shape, header.y_shape, header.z_shape) == ((64, 64), (4, 4), (1, 1))
    assert header.options == OPTIONS and header.fingerprint == fp
    direct = codec.decompress(out["strings"], out["shape"], out["y_shape"], out["z_shape"])
    assert torch.equal(safe_decompress(codec, header, streams), direct)
    x_hat, _ = decode_image(codec, data, fp)
    assert torch.equal(x_hat, direct)


def test_factorized_round_trip():
    torch.manual_seed(0)
    codec = Codec(build_backbone("bmshj_factorized", N=8, M=8), NoiseQuantizer()).eval()
    codec.update(force=True)
    fp = codec_fingerprint(codec, {"model": "bmshj_factorized"})
    x = torch.rand(1, 3, 33, 70)
    x_hat, header = decode_image(codec, encode_image(codec, x, fp), fp)
    out = codec.compress(x)
    assert header.z_shape is None and header.y_shape == (3, 5)
    assert torch.equal(x_hat, codec.decompress(out["strings"], (33, 70), (3, 5)))
    with pytest.raises(ValueError, match="one image"):
        encode_image(codec, torch.rand(2, 3, 16, 16), fp)


def test_layout_is_deterministic_and_compact():
    h = Header(b"\x01" * 8, (3, 65535), (1, 1), None, {"b": 1, "a": [2, 3]})
    same = Header(b"\x01" * 8, (3, 65535), (1, 1), None, {"a": [2, 3], "b": 1})
    data = pack(h, [b"xyz"])
    assert data == pack(same, [b"xyz"]) and data[:5] == MAGIC + b"\x02"
    # options (keys not in the registry): mask, count, then (key length, key, value length, JSON)
    opts = b"\x40\x02" + b"\x01a\x00\x05[2,3]" + b"\x01b\x00\x011"
    assert data[25:25 + len(opts)] == opts
    assert len(data) == 4 + 1 + 8 + 12 + len(opts) + 1 + 4 + 3 + 4
    header, streams = unpack(data)
    assert header == Header(b"\x01" * 8, (3, 65535), (1, 1), None, {"a": [2, 3], "b": 1})
    assert streams == [b"xyz"]
    for bad in [Header(b"short", (1, 1), (1, 1)), Header(b"\0" * 8, (0, 1), (1, 1)),
                Header(b"\0" * 8, (1, 65536), (1, 1))]:
        with pytest.raises(ValueError):
            pack(bad, [b""])
    with pytest.raises(ValueError, match="streams"):
        pack(h, [b""] * 65)


def test_error_messages(real):
    _, fp, _, data = real
    cases = {
        b"": "not a codecx file",
        PNG: "not a codecx file",
        data[:2]: "truncated",
        data[:4] + b"\x07" + data[5:]: "version 7; this codecx reads version(s) 1, 2",
        data[:-1]: f"expected at least {len(data)} bytes, got {len(data) - 1}",
        data[:40]: "truncated",
        data[:100] + bytes([data[100] ^ 4]) + data[101:]: "CRC32 mismatch",
        data + b"\0\0": "trailing garbage",
    }
    for bad, message in cases.items():
        with pytest.raises(BitstreamError, match=re.escape(message)):
            unpack(bad, fp)


def test_fingerprint_mismatch(real):
    codec, fp, _, data = real
    other = _codec(1)
    fp2 = codec_fingerprint(other, CONFIG)
    assert fp2 != fp and len(fp2) == 8
    with pytest.raises(BitstreamError, match="encoded with a different model/configuration"):
        unpack(data, fp2)
    with pytest.raises(BitstreamError, match="different model"):
        decode_image(other, encode_image(other, torch.rand(1, 3, 32, 32), fp2), fp)
    # the config and the CDF tables both enter the fingerprint
    assert codec_fingerprint(codec, {**CONFIG, "quantizer": "ste"}) != fp
    cdf = codec.backbone.gaussian_conditional._quantized_cdf
    assert fingerprint(CONFIG, [cdf]) != fingerprint(CONFIG, [cdf + 1])
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


@pytest.mark.parametrize("name", list(BACKBONES))
def test_expected_latent_shapes(name):
    bb = tiny_backbone(name, N=8, M=8).eval()
    for shape in [(64, 64), (33, 70), (16, 16)]:
        with torch.no_grad():
            y = bb.g_a(pad_to(torch.zeros(1, 3, *shape), bb.stride))
            z = None if bb.family == "factorized" else tuple(bb.h_a(bb._h_a_input(y)).shape[-2:])
        assert expected_latent_shapes(bb, shape) == (tuple(y.shape[-2:]), z)


def test_inconsistent_header_and_adversarial_streams(real):
    codec, fp, _, data = real
    header, streams = unpack(data, fp)
    for bad in [Header(fp, (64, 64), (4, 5), (1, 1)), Header(fp, (200, 64), (4, 4), (1, 1)),
                Header(fp, (64, 64), (4, 4), None)]:
        with pytest.raises(BitstreamError, match="do not fit"):
            safe_decompress(codec, bad, streams)
    with pytest.raises(BitstreamError, match="2 stream"):
        safe_decompress(codec, header, streams[:1])
    # long runs of 0xF nibbles drive CompressAI's bypass decoding far past the buffer
    # (a bare codec.decompress segfaults on this); the padding keeps the reads in bounds: garbage
    # gives an image of the header's size, the same each time, or a one-line BitstreamError
    real_image = safe_decompress(codec, header, streams)
    for junk in ([b"\xff" * 400_000] * 2, [b"", b""], [b"\x00" * 3, b"\xff"]):
        try:
            x = safe_decompress(codec, header, junk)
        except BitstreamError as e:
            assert str(e) and "\n" not in str(e)
            continue
        assert x.shape == (1, 3, 64, 64) and bool(torch.isfinite(x).all())
        assert 0 <= float(x.min()) <= float(x.max()) <= 1
        assert torch.equal(x, safe_decompress(codec, header, junk))  # deterministic: no out-of-bounds reads
        assert not torch.equal(x, real_image)


def _variants(data: bytes, rng: random.Random):
    """(kind, bytes, crc_fixed) corrupted variants of a packed stream."""
    n = len(data)
    yield "empty", b"", False
    yield "png", PNG + data[len(PNG):], False
    yield "magic only", MAGIC, False
    for cut in range(n):
        yield f"truncated to {cut}", data[:cut], False
    for i in range(250):
        b = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        yield f"bit flips {i}", bytes(b), False
        # the same damage with a valid CRC: the decoder itself must cope
        yield f"bit flips {i} + crc", _recrc(bytes(b)), True
    for i in range(60):
        p = rng.randrange(n + 1)
        ins = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 9)))
        yield f"insert {i}", data[:p] + ins + data[p:], False
        yield f"delete {i}", data[:p] + data[p + rng.randint(1, 9):], False
    for i in range(40):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600)))
        yield f"garbage {i}", junk, False
        yield f"magic + garbage {i}", _recrc(MAGIC + b"\x01" + junk + b"\0" * 4), True
    for i in range(40):  # overwrite a run inside the streams, keep the CRC valid
        b, p = bytearray(data), rng.randrange(40, n - 4)
        end = min(p + rng.randint(1, 64), n - 4)
        b[p:end] = bytes([rng.choice([0, 0xFF, rng.getrandbits(8)])]) * (end - p)
        yield f"overwrite {i}", _recrc(bytes(b)), True


@pytest.mark.timeout(600)  # ~1000 decodes of a 64-px image: only a hang gets near this
def test_fuzz_corrupted_streams(real):
    _fuzz(*real[:2], real[3])


@pytest.mark.medium
@pytest.mark.timeout(900)  # minutes on a loaded 2-core machine (the serial model decodes position by position)
@pytest.mark.parametrize("backbone, quantizer", [("mbt_mean", "hex"), ("mbt_mean", "oct"), ("mbt", None)])
def test_fuzz_lattice_and_serial_streams(backbone, quantizer):
    """The same corruptions on constriction-coded lattice streams (with a latent shift index in
    the header) and on a serial context model's stream."""
    from codecx.inference.latent_shift import LatentShift
    from codecx.quantizers import LatticeQuantizer

    codec = _codec(1, backbone, LatticeQuantizer(quantizer) if quantizer else None)
    if quantizer:
        codec.add_transforms(LatentShift("latent", [0.0, 0.02, 0.05]))
    fp = codec_fingerprint(codec, {"backbone": backbone, "quantizer": quantizer})
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    data = encode_image(codec, x, fp)
    assert torch.equal(decode_image(codec, data, fp)[0], codec(x).x_hat.clamp(0, 1))
    _fuzz(codec, fp, data)


def _fuzz(codec, fp: bytes, data: bytes) -> None:
    """Decode many corrupted variants of `data`: a BitstreamError or a 64x64 image (only when the
    CRC was made valid again), never another exception, never a hang (the test's timeout)."""
    rng = random.Random(1234)
    counts = {"error": 0, "decoded": 0}
    for kind, bad, crc_fixed in _variants(data, rng):
        try:
            x_hat, _ = decode_image(codec, bad, fp)
        except BitstreamError as e:
            assert str(e), kind
            counts["error"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{kind}: {type(e).__name__} leaked: {e}")
        else:
            assert crc_fixed or bad == data, f"{kind}: decoded despite a bad CRC"
            assert x_hat.shape == (1, 3, 64, 64), kind
            counts["decoded"] += 1
    assert sum(counts.values()) >= 500 and counts["error"] > 400
