"""The codecx file format: one compressed image as header + rANS streams + CRC32.

Layout (big-endian integers)::

    offset  size  field
    0       4     magic b"CDCX"
    4       1     format version (2)
    5       8     model fingerprint (see `fingerprint`)
    13      2+2   image height, width           (1..65535)
    17      2+2   y latent height, width        (1..65535)
    21      2+2   z latent height, width        (0, 0 when there is no z)
    25      1..   method options, compact binary (`codecx.coding.options`: a presence mask,
                  then one value per option the codec's stages declare; none: 1 byte, a
                  latent-shift index: 2 bytes)
    ...     1     number of streams              (1..64)
    ...     4+k   per stream: length k, then k bytes (stream 0 is y, stream 1 is z)
    end-4   4     CRC32 of every byte before it

`unpack` checks every length against the bytes left before reading it, so any input ends in
`Header, streams` or a `BitstreamError`, never another exception. `safe_decompress` bounds the
work before it allocates anything: the image size against a pixel cap (`max_pixels`, default
2**28), the latent sizes against the image size and the model's strides, the stream count;
`check_method_names` checks the method names of the header against the known options.

Version 1 files (options as a 2-byte length and sorted compact JSON at offset 25) still decode;
`pack` writes version 2.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from codecx.coding.options import MAX_BLOCK, MalformedOptions, canonical_json, decode_options, encode_options

MAGIC = b"CDCX"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # 1: options as JSON (2-byte length + text); 2: compact binary
FINGERPRINT_SIZE = 8
MAX_STREAMS = 64
MAX_OPTIONS = MAX_BLOCK  # bytes of the options block
OPTIONS_OFFSET = 25  # the options block follows magic, version, fingerprint and sizes
_FIXED = struct.Struct(">6H")  # H, W, y_h, y_w, z_h, z_w
MAX_PIXELS = 2**28  # decoding refuses larger images (a 16384 x 16384 photo; configurable)


class BitstreamError(ValueError):
    """A codecx file that cannot be decoded: not ours, damaged, or from another model."""


@dataclass
class Header:
    """What a decoder needs besides the streams: model fingerprint, sizes and method options."""

    fingerprint: bytes
    shape: Tuple[int, int]
    y_shape: Tuple[int, int]
    z_shape: Optional[Tuple[int, int]] = None
    options: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_output(cls, out: Dict, fingerprint: bytes, options: Optional[Dict] = None) -> "Header":
        """The header for one image of `Codec.compress(x)`'s output `out`."""
        z = out.get("z_shape")
        return cls(fingerprint, tuple(out["shape"]), tuple(out["y_shape"]),
                   None if z is None else tuple(z), dict(options or {}))


def fingerprint(config: Dict, state_tensors: Iterable[Tensor] = ()) -> bytes:
    """First 8 bytes of sha256 of canonical JSON `config` (a plain dict) and the tensors."""
    h = hashlib.sha256(canonical_json(config))
    for t in state_tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"|{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:FINGERPRINT_SIZE]


def codec_fingerprint(codec: torch.nn.Module, config: Dict) -> bytes:
    """`fingerprint` of `config` and all of `codec.state_dict()` (call after `codec.update()`)."""
    # weights and CDF tables, in name order: tables built elsewhere must match bit for bit
    return fingerprint(config, (t for _, t in sorted(codec.state_dict().items())))


def _dims(shape, name: str, allow_none: bool = False) -> Tuple[int, int]:
    """Validate a (height, width) pair for `pack`; None becomes (0, 0) where allowed."""
    if shape is None and allow_none:
        return 0, 0
    if shape is None or len(shape) != 2 or not all(1 <= int(d) <= 65535 for d in shape):
        raise ValueError(f"{name}={shape!r}: expected two sizes in 1..65535")
    return int(shape[0]), int(shape[1])


def pack(header: Header, streams: List[bytes]) -> bytes:
    """Serialize one image's header and streams (layout in the module docstring)."""
    if len(header.fingerprint) != FINGERPRINT_SIZE:
        raise ValueError(f"fingerprint must be {FINGERPRINT_SIZE} bytes, "
                         f"got {len(header.fingerprint)}")
    if not 1 <= len(streams) <= MAX_STREAMS:
        raise ValueError(f"expected 1..{MAX_STREAMS} streams, got {len(streams)}")
    opts = encode_options(header.options)
    sizes = (*_dims(header.shape, "shape"), *_dims(header.y_shape, "y_shape"),
             *_dims(header.z_shape, "z_shape", allow_none=True))
    parts = [MAGIC, bytes([FORMAT_VERSION]), bytes(header.fingerprint), _FIXED.pack(*sizes),
             opts, bytes([len(streams)])]
    for s in streams:
        if len(s) >= 2**32:
            raise ValueError(f"stream of {len(s)} bytes is too long (max 2**32 - 1)")
        parts += [struct.pack(">I", len(s)), bytes(s)]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    """Bounds-checked reads from a byte string."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        """The next `n` bytes, or a truncation error naming `what`."""
        left = len(self.data) - self.pos
        if n > left:
            raise BitstreamError(
                f"truncated codecx file: {what} needs {n} bytes at offset {self.pos} but only "
                f"{left} remain; expected at least {self.pos + n + (0 if what == 'CRC32' else 4)} "
                f"bytes, got {len(self.data)} (or a length field is corrupted)")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def uint(self, fmt: str, what: str) -> int:
        """One big-endian unsigned integer of struct format `fmt`."""
        return struct.unpack(">" + fmt, self.take(struct.calcsize(fmt), what))[0]


def _check_crc(data: bytes, end: int) -> None:
    """BitstreamError unless the 4 bytes at `end` are the CRC32 of the bytes before them."""
    stored, computed = int.from_bytes(data[end : end + 4], "big"), zlib.crc32(data[:end])
    if end < 0 or len(data) < end + 4 or stored != computed:
        raise BitstreamError(f"corrupted codecx file: CRC32 mismatch (stored {stored:08x}, "
                             f"computed {computed:08x}); the bytes were altered")


def unpack(data: bytes, expected_fingerprint: Optional[bytes] = None) -> Tuple[Header, List[bytes]]:
    """Parse and verify a codecx file; raises `BitstreamError` on any problem."""
    data = bytes(data)
    if data[:4] != MAGIC[: len(data[:4])] or not data:
        raise BitstreamError(f"not a codecx file: expected it to start with {MAGIC!r}, "
                             f"got {data[:8]!r}")
    r = _Reader(data)
    r.take(4, "magic")
    version = r.uint("B", "format version")
    if version not in SUPPORTED_VERSIONS:
        raise BitstreamError(
            f"unsupported codecx format version {version}; this codecx reads version(s) "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (a newer codecx wrote it: decode it with "
            "that codecx; or the file is corrupted)")
    fp = r.take(FINGERPRINT_SIZE, "model fingerprint")
    h, w, yh, yw, zh, zw = _FIXED.unpack(r.take(_FIXED.size, "image and latent sizes"))
    options: Any = None
    if version == 1:  # a 2-byte length and JSON text, parsed once the CRC is known good
        n_opts = r.uint("H", "options length")
        if n_opts > MAX_OPTIONS:
            raise BitstreamError(f"corrupted codecx header: options block of {n_opts} bytes "
                                 f"(at most {MAX_OPTIONS})")
        opts = r.take(n_opts, "options block")
    else:
        try:
            options = decode_options(r.take)
        except MalformedOptions as e:
            _check_crc(data, len(data) - 4)  # damaged bytes are named as such first
            raise BitstreamError(f"malformed codecx header: {e}") from None
    n_streams = r.uint("B", "stream count")
    if not 1 <= n_streams <= MAX_STREAMS:
        raise BitstreamError(f"corrupted codecx header: {n_streams} streams "
                             f"(expected 1..{MAX_STREAMS})")
    streams = [r.take(r.uint("I", f"length of stream {i}"), f"stream {i}")
               for i in range(n_streams)]
    end = r.pos
    r.take(4, "CRC32")
    _check_crc(data, end)
    if r.pos != len(data):
        raise BitstreamError(f"trailing garbage: the codecx data ends at byte {r.pos} but the "
                             f"input has {len(data)} bytes ({len(data) - r.pos} extra)")
    if 0 in (h, w, yh, yw) or (zh == 0) != (zw == 0):
        raise BitstreamError(f"malformed codecx header: image {h}x{w}, y {yh}x{yw}, z {zh}x{zw}")
    if version == 1:
        try:
            options = json.loads(opts.decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise BitstreamError(f"malformed codecx header: options block is not JSON ({e})") from None
        if not isinstance(options, dict):
            raise BitstreamError("malformed codecx header: options must be a JSON object, "
                                 f"got {opts[:40]!r}")
    if expected_fingerprint is not None and fp != bytes(expected_fingerprint):
        raise BitstreamError(
            f"encoded with a different model/configuration: file fingerprint {fp.hex()}, this "
            f"model's {bytes(expected_fingerprint).hex()}; decode it with the checkpoint and "
            "config that encoded it")
    header = Header(fp, (h, w), (yh, yw), (zh, zw) if zh else None, options)
    return header, streams


def expected_latent_shapes(backbone, shape: Tuple[int, int]):
    """(y_shape, z_shape) that `Codec.compress` yields for an image of `shape` (H, W)."""
    return backbone.latent_shapes(*shape)


def check_method_names(options: Mapping[str, Any], known: Mapping[str, Sequence[str]]) -> None:
    """BitstreamError unless each method name of the header (`known`'s keys, e.g. quantizer,
    transform: comma-separated names) is absent or one of the known options (checked before
    anything is built from it)."""
    for key, choices in known.items():
        if key not in options or options[key] is None:
            continue
        name = options[key]
        if not isinstance(name, str) or not set(name.split(",")) <= set(choices):
            raise BitstreamError(
                f"malformed codecx header: {key}={str(name)[:60]!r} is not a known option "
                f"({', '.join(sorted(choices))}); the file is corrupted or was written by another "
                "codecx")


def check_header(backbone, header: Header, n_streams: int, max_pixels: int = MAX_PIXELS) -> None:
    """The header's sizes are possible for this model, before anything is allocated: at most
    `max_pixels` pixels, latent sizes equal to those of the image size and the model's strides,
    one stream per latent; BitstreamError otherwise."""
    h, w = header.shape
    if h * w > max_pixels:
        raise BitstreamError(
            f"the header claims a {w}x{h} image ({h * w} pixels), more than the decoder's cap of "
            f"{max_pixels} pixels; the file is forged or corrupted (raise the cap with "
            "--max-pixels / max_pixels= only for a file you trust)")
    y_shape, z_shape = expected_latent_shapes(backbone, header.shape)
    if (tuple(header.y_shape), header.z_shape and tuple(header.z_shape)) != (y_shape, z_shape):
        raise BitstreamError(
            f"latent shapes y={header.y_shape}, z={header.z_shape} do not fit a "
            f"{h}x{w} image for this model (expected y={y_shape}, "
            f"z={z_shape}): the file is corrupted or from another model")
    expected = 1 if z_shape is None else 2
    if n_streams != expected:
        raise BitstreamError(f"this model decodes {expected} stream(s), the file has {n_streams}")
    need, free = decode_memory(backbone, header.shape), _free_memory()
    if free is not None and need > free:
        raise BitstreamError(
            f"decoding a {w}x{h} image with this model needs about {need / 2**30:.1f} GiB, more "
            f"than the {free / 2**30:.1f} GiB of free memory; the file is forged, or decode it "
            "on a larger machine")


def decode_memory(backbone, shape: Tuple[int, int]) -> int:
    """A rough lower bound of the bytes a decode needs: g_s's widest float32 activation (N
    channels at half resolution) held twice, plus the image."""
    h, w = shape
    n = int(getattr(backbone, "N", 0) or getattr(backbone, "M", 0) or 3)
    return int(2 * (h * w / 4) * n * 4 + 3 * h * w * 4)


class ImageTooLargeError(ValueError):
    """An image the encoder refuses before it allocates: over the pixel cap, over the format's
    65535 px a side, or needing more memory than is free (names the image and the way out)."""


def encode_memory(backbone, shape: Tuple[int, int]) -> int:
    """About the peak bytes an encode needs (measured within ~20% on mbt_mean, N=8..32): the
    float image and its padded copy, g_a's widest activation (N channels at half resolution)
    five times (its GDN temporaries), and the coder's symbol / index lists (M per 16x16 px)."""
    h, w = shape
    n = int(getattr(backbone, "N", 0) or getattr(backbone, "M", 0) or 3)
    m = int(getattr(backbone, "M", 0) or n)
    return int(2 * 3 * h * w * 4 + 5 * (h * w / 4) * n * 4 + 16 * m * h * w / 256)


def check_encode(backbone, shape: Tuple[int, int], name: str = "image", max_pixels: int = MAX_PIXELS,
                 option: str = "max_pixels=N") -> None:
    """ImageTooLargeError unless an image of `shape` (H, W) can be encoded: at most `max_pixels`
    pixels (the decoder's default cap: what the encoder writes, the decoder reads), at most
    65535 px a side (the header's fields), and the memory of `encode_memory` free; `option`
    names the setting that raises the cap. Checked before anything is allocated (the image
    size can come from the file header)."""
    h, w = (int(d) for d in shape)
    if h * w > max_pixels:
        raise ImageTooLargeError(
            f"{name}: a {w}x{h} image ({h * w} pixels) is more than the encoder's cap of {max_pixels} "
            f"pixels; downscale or tile it, or raise the cap ({option}) on a machine with the memory")
    if max(h, w) > 65535:
        raise ImageTooLargeError(f"{name}: {w}x{h} px; the codecx format holds at most 65535 px a side "
                                 "(downscale or tile it)")
    need, free = encode_memory(backbone, (h, w)), _free_memory()
    if free is not None and need > free:
        raise ImageTooLargeError(
            f"{name}: encoding a {w}x{h} image with this model needs about {need / 2**30:.1f} GiB, more "
            f"than the {free / 2**30:.1f} GiB of free memory; downscale or tile it, or encode it on a "
            "larger machine")


def _free_memory() -> Optional[int]:
    """Available physical memory in bytes (None where the OS does not tell)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@contextlib.contextmanager
def _stderr_captured():
    """Hold what native code writes to file descriptor 2 (constriction's Rust panic messages and
    backtraces) in a temp file; yields a callable that returns it. The caller re-emits it when
    decoding succeeds."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode(errors="replace"))[1]
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)


def _pad(stream: bytes, n_symbols: int) -> bytes:
    """`stream` followed by zeros, so that decoding garbage never reads past the buffer."""
    # CompressAI's RansDecoder has no bounds checks: it reads one 32-bit word per symbol at
    # most, plus, in bypass mode, a run of 0xF nibbles can make it read ~15x the stream length
    # (400 kB of 0xFF segfaults a bare decompress). A valid stream never reaches the padding,
    # so its decoding is unchanged; on garbage the zeros end every bypass run.
    return bytes(stream) + bytes(16 * len(stream) + 8 * n_symbols + 64)


def safe_decompress(codec, header: Header, streams: List[bytes], max_pixels: int = MAX_PIXELS,
                    channels_last: bool = True) -> Tensor:
    """`codec.decompress` for one unpacked image; any failure becomes a `BitstreamError`. The
    header is checked (`check_header`) before anything is allocated; what native code prints
    while decoding garbage (Rust panic backtraces) is kept off stderr. `channels_last`: as
    `Codec.decompress`'s."""
    bb = codec.backbone
    check_header(bb, header, len(streams), max_pixels)
    y_shape, z_shape = expected_latent_shapes(bb, header.shape)
    n_symbols = [int(bb.M) * y_shape[0] * y_shape[1]]
    if z_shape is not None:
        n_symbols.append(int(bb.entropy_bottleneck.channels) * z_shape[0] * z_shape[1])
    failed = False
    with _stderr_captured() as captured:
        try:
            padded = [_pad(s, n) for s, n in zip(streams, n_symbols)]
            x_hat = codec.decompress([padded], header.shape, y_shape, z_shape,
                                     options=[header.options], channels_last=channels_last)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - whatever garbage does to the decoder,
            # including constriction's Rust panics (pyo3's PanicException derives from
            # BaseException) and MemoryError
            failed = e
        text = captured()
    if failed is not False or not torch.isfinite(x_hat.sum()):
        _blame_weights(codec)
    if failed is not False:
        e = failed
        raise BitstreamError(f"could not decode the streams ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}); the file is corrupted or from "
                             "another model") from e
    if text:
        sys.stderr.write(text)
    # x_hat is clamped to [0, 1], so only NaN can be non-finite: one sum tells
    if tuple(x_hat.shape[-2:]) != tuple(header.shape) or not torch.isfinite(x_hat.sum()):
        raise BitstreamError("the streams decode to an invalid image (wrong size or NaN/inf): "
                             "the file is corrupted or from another model")
    return x_hat


def _blame_weights(codec) -> None:
    """A decode that failed or gave NaN with non-finite weights: the checkpoint is to blame, not
    the file (ValueError naming the tensors)."""
    from codecx.models.build import non_finite_tensors

    bad = non_finite_tensors(codec.state_dict())
    if bad:
        raise ValueError(f"the decoder's parameters are not finite (NaN/Inf in {', '.join(bad)}): the "
                         "checkpoint holds a diverged or damaged model, the file may be fine; decode it "
                         "with a finite checkpoint of the same model")


def encode_image(codec, x: Tensor, fingerprint: bytes, options: Optional[Dict] = None,
                 compressed: Optional[Dict] = None, max_pixels: int = MAX_PIXELS,
                 name: str = "image") -> bytes:
    """Compress one image (1, 3, H, W) into a codecx file (`compressed`: `codec.compress(x)`'s
    output when the caller has it already, e.g. for its rate estimate); `check_encode` first."""
    if x.dim() != 4 or x.size(0) != 1:
        raise ValueError(f"encode_image takes one image (1, 3, H, W), got {tuple(x.shape)}")
    if compressed is None:
        check_encode(codec.backbone, tuple(x.shape[-2:]), name, max_pixels)
    out = codec.compress(x, estimate=False) if compressed is None else compressed
    opts = dict(options or {})
    signalled = out.get("options", [{}])[0]  # what the codec's stages signal (e.g. shift_index)
    undeclared = sorted(set(signalled) - {k for t in getattr(codec, "transforms", ()) for k in t.header_options})
    if undeclared:
        raise ValueError(f"the codec signals header option(s) {', '.join(undeclared)} that none of its latent "
                         "transforms declares (`header_options`, codecx.transforms.base.Declares)")
    opts.update(signalled)
    return pack(Header.from_output(out, fingerprint, opts), out["strings"][0])


def decode_image(codec, data: bytes, fingerprint: Optional[bytes] = None,
                 max_pixels: int = MAX_PIXELS, channels_last: bool = True) -> Tuple[Tensor, Header]:
    """Unpack, verify and decode a codecx file; returns (x_hat (1, 3, H, W), header).
    `channels_last`: as `Codec.decompress`'s."""
    header, streams = unpack(data, fingerprint)
    return safe_decompress(codec, header, streams, max_pixels, channels_last), header
