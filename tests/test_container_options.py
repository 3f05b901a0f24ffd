"""Compact binary header options (codecx format 2): every option kind round-trips, the latent
shift index (arXiv 2501.01231 sec. 4) costs one byte, format-1 (JSON options) files still decode."""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch

from codecx.conf import CONF_DIR
from codecx.coding.container import (BitstreamError, Header, _Reader, decode_image, encode_image,
                                     pack, unpack)
from codecx.coding.options import (EXTRA_ID, OPTION_KEYS, MalformedOptions, OptionKey,
                                   decode_options, encode_options)
from codecx.inference.latent_shift import LatentShift
from conftest import tiny_codec

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = Path(CONF_DIR)
# a registry with every kind, for the round trips
KEYS = (OptionKey("i", 0, "index"), OptionKey("u", 1, "uint"), OptionKey("n", 2, "name", ("a", "bb")))


def _decode(block: bytes, keys=OPTION_KEYS, extra_id=EXTRA_ID):
    """decode_options of `block`, which must consume all of it."""
    r = _Reader(block)
    out = decode_options(r.take, keys, extra_id)
    assert r.pos == len(block)
    return out


def _v1(data: bytes) -> bytes:
    """The same file in format 1 (options: 2-byte length + sorted compact JSON), as codecx wrote
    it before the binary options."""
    header, streams = unpack(data)
    opts = json.dumps(header.options, sort_keys=True, separators=(",", ":")).encode()
    z = header.z_shape or (0, 0)
    body = (b"CDCX\x01" + header.fingerprint + struct.pack(">6H", *header.shape, *header.y_shape, *z)
            + struct.pack(">H", len(opts)) + opts + bytes([len(streams)])
            + b"".join(struct.pack(">I", len(s)) + s for s in streams))
    return body + struct.pack(">I", zlib.crc32(body))


def _shift_codec(shift=None):
    torch.manual_seed(0)
    codec = tiny_codec("mbt_mean")
    with torch.no_grad():
        codec.backbone.g_a[-1].weight.mul_(5)
    if shift is not None:
        codec.add_transforms(shift)
    codec.eval().update(force=True)
    return codec


def test_every_option_kind_round_trips():
    cases = [({}, b"\x00"), ({"i": 0}, b"\x01\x00"), ({"i": 255}, b"\x01\xff"),
             ({"u": 0}, b"\x02\x00"), ({"u": 127}, b"\x02\x7f"), ({"u": 128}, b"\x02\x80\x01"),
             ({"u": 2**32 - 1}, b"\x02\xff\xff\xff\xff\x0f"), ({"n": "bb"}, b"\x04\x01"),
             ({"n": "new_method"}, b"\x04\xff\x0anew_method"),
             ({"i": 7, "n": "a", "u": 300}, b"\x07\x07\xac\x02\x00"),
             ({"z": [1, {"b": None}], "i": 1}, b"\x41\x01\x01\x01z\x00\x0e[1,{\"b\":null}]")]
    for options, block in cases:
        assert encode_options(options, KEYS, 6) == block, options
        assert _decode(block, KEYS, 6) == options
    # an id beyond the first mask byte: a second mask byte
    far = (*KEYS, OptionKey("f", 9, "index"))
    assert encode_options({"f": 5}, far, 6) == b"\x80\x04\x05" and _decode(b"\x80\x04\x05", far, 6) == {"f": 5}
    # the default registry, through a whole file: every registered key, a name outside the
    # tables, an unregistered key (e.g. a user transform's signal)
    opts = {"shift_index": 7, "side_shift_index": 0, "quantizer": "hex", "shift": "latent_side",
            "toy_sign": 1}
    header, streams = unpack(pack(Header(bytes(8), (64, 64), (4, 4), (1, 1), opts), [b"y", b"z"]))
    assert header.options == opts and streams == [b"y", b"z"]
    assert unpack(pack(Header(bytes(8), (8, 8), (1, 1), None, {"quantizer": "../model/x"}), [b""]))[0].options == {
        "quantizer": "../model/x"}  # still refused by name (check_method_names) before use
    for bad, msg in [({"i": 256}, "0..255"), ({"i": True}, "0..255"), ({"u": -1}, "0..4294967295"),
                     ({"n": None}, "printable ASCII"), ({"n": "é"}, "printable ASCII"),
                     ({"n": "x" * 65}, "printable ASCII"), ({"": 1}, "printable ASCII")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            encode_options(bad, KEYS, 6)
    with pytest.raises(ValueError, match="distinct"):  # a registry with a repeated id
        encode_options({}, (*KEYS, OptionKey("j", 2, "index")), 6)


def test_registry_names_every_quantizer_and_shift_option():
    """A conf option missing from the tables would still code (escaped name), at ~len(name) bytes
    more: add it at the end of the table in codecx/coding/options.py."""
    tables = {k.key: set(k.names) for k in OPTION_KEYS if k.kind == "name"}
    for group in ("quantizer", "shift"):
        conf = {p.stem for p in (CONF / group).glob("*.yaml")}
        assert conf <= tables[group], f"register {sorted(conf - tables[group])} in OPTION_KEYS"
        assert len(encode_options({group: sorted(conf)[0]})) == 2


def test_malformed_options_are_bitstream_errors():
    good = pack(Header(bytes(8), (64, 64), (4, 4), (1, 1), {"shift_index": 1}), [b"y", b"z"])
    body = good[:-4]
    for block, msg in [(b"\x20\x00", "option id(s) [5] unknown"), (b"\x04\x07", "quantizer id 7 is not known"),
                       (b"\x80\x80\x80\x00", "mask longer than 3 bytes"),
                       (b"\x40\x01\x0bshift_index\x00\x011", "registered"),
                       (b"\x40\x02\x01b\x00\x011\x01a\x00\x011", "out of order"),
                       (b"\x40\x01\x01a\x00\x02[1", "not JSON"), (b"\x04\xff\x02\x00\x01", "printable ASCII")]:
        forged = body[:25] + block + body[27:]
        with pytest.raises(BitstreamError, match="malformed codecx header: .*" + re.escape(msg)):
            unpack(forged + struct.pack(">I", zlib.crc32(forged)))
        # the same bytes with the old CRC: named as damage first
        with pytest.raises(BitstreamError, match="CRC32 mismatch"):
            unpack(forged + good[-4:])
    with pytest.raises(MalformedOptions):
        _decode(b"\x02\x80\x80\x80\x80\x80\x01", KEYS, 6)


def test_shift_index_costs_one_byte_and_decodes_bit_exactly():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain, shifted = _shift_codec(), _shift_codec(LatentShift("latent"))
    sizes = {}
    for name, codec in (("plain", plain), ("shift", shifted)):
        data = encode_image(codec, x, bytes(8))
        header, streams = unpack(data)
        sizes[name] = len(data) - sum(map(len, streams))
        with torch.no_grad():
            ref = codec(x).x_hat.clamp(0, 1)
        x_file, header = decode_image(codec, data, bytes(8))
        assert torch.equal(x_file, ref)
        # a format-1 file of the same image decodes to the same bits
        old = _v1(data)
        assert old[4] == 1 and len(old) > len(data)
        assert torch.equal(decode_image(codec, old, bytes(8))[0], ref)
        assert unpack(old)[0].options == header.options
    assert header.options.keys() == {"shift_index"} and 0 <= header.options["shift_index"] < 8
    # 25 fixed + 1 options mask + 1 stream count + 2 x 4 stream lengths + 4 CRC; format 1: 42 and 57
    assert sizes == {"plain": 39, "shift": 40}
    assert len(_v1(encode_image(plain, x, bytes(8)))) - len(encode_image(plain, x, bytes(8))) == 3


def test_other_versions_are_refused_clearly():
    data = bytearray(pack(Header(bytes(8), (8, 8), (1, 1), None, {}), [b""]))
    data[4] = 3
    with pytest.raises(BitstreamError, match=r"version 3; this codecx reads version\(s\) 1, 2 \(a newer codecx"):
        unpack(bytes(data))
