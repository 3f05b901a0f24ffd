"""Method options of the codecx header in compact binary form (format version 2).

The options a decoder needs (those the latent transforms declare, e.g. the latent-shift index of
arXiv 2501.01231 sec. 4; the quantizer and transform names the CLI records) cost what they
carry: a presence mask, then one value per registered key present, in id order. `OPTION_KEYS` is
the one registry of option keys, their small ids and kinds; ids and name tables are part of the
format, so they are append-only.

Layout::

    mask    1..3 bytes  bit i of the 7-bit groups (low group first; bit 7 of a byte = another
                        byte follows) set when the key of id i is present
    values  per present id, ascending:
              index  1 byte, 0..255                      (shift_index)
              uint   LEB128, 1..5 bytes, < 2**32
              name   1 byte: position in the key's name table, or 0xFF then a length byte
                     (1..64) and the ASCII name (a method not registered yet)
              extra  (id `EXTRA_ID`) keys not registered: a count byte (1..255), then per key,
                     sorted: length byte (1..64), ASCII key, 2-byte length, compact JSON value

No options is one byte (mask 0); a shift index is two (mask, index).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Sequence, Tuple

KINDS = ("index", "uint", "name")  # "uint": for counts / table ids of future keys
NAME_ESCAPE = 0xFF
MAX_NAME = 64
MAX_MASK_BYTES = 3  # ids 0..20
MAX_BLOCK = 4096  # bytes of the whole options block


@dataclass(frozen=True)
class OptionKey:
    """One registered header option: its key, its id (bit of the presence mask) and its kind;
    `names` is the id table of a "name" option (append only: positions are in files)."""

    key: str
    id: int
    kind: str
    names: Tuple[str, ...] = ()


# The registry (append only): the compact form of keys the stages declare (`header_options` of
# codecx.transforms.base.Declares; others go to the JSON block) and of the method names the CLI
# records. Names: the options of codecx/conf/quantizer, conf/shift (presets of the latent_shift
# transform) and conf/transform (`transform`: decode-time transforms, comma-separated).
OPTION_KEYS: Tuple[OptionKey, ...] = (
    OptionKey("shift_index", 0, "index"),
    OptionKey("side_shift_index", 1, "index"),
    OptionKey("quantizer", 2, "name", ("noise", "ste", "hex", "oct", "d4", "mixed")),
    OptionKey("shift", 3, "name", ("none", "latent", "latent_fast", "latent_side", "scalar", "sign")),
    OptionKey("transform", 4, "name", ("latent_shift",)),
)
EXTRA_ID = 6  # the block of keys not in the registry (compact JSON values)


class MalformedOptions(ValueError):
    """An options block that does not parse (the container turns it into a BitstreamError)."""


def _check_registry(keys: Sequence[OptionKey], extra_id: int) -> None:
    """Ids unique and in range, kinds known, name tables short enough for one byte."""
    ids = [k.id for k in keys] + [extra_id]
    if len(set(ids)) != len(ids) or not all(0 <= i < 7 * MAX_MASK_BYTES for i in ids):
        raise ValueError(f"option ids must be distinct and in 0..{7 * MAX_MASK_BYTES - 1}: {ids}")
    for k in keys:
        if k.kind not in KINDS:
            raise ValueError(f"option {k.key!r}: kind {k.kind!r} is not one of {KINDS}")
        if len(k.names) >= NAME_ESCAPE or len(set(k.names)) != len(k.names):
            raise ValueError(f"option {k.key!r}: name table must be distinct and < 255 names")


_check_registry(OPTION_KEYS, EXTRA_ID)


def _ascii(s: Any, what: str) -> bytes:
    """`s` as 1..MAX_NAME printable ASCII bytes, for `pack` (ValueError otherwise)."""
    if not (isinstance(s, str) and 1 <= len(s) <= MAX_NAME and s.isascii() and s.isprintable()):
        raise ValueError(f"{what}={str(s)[:80]!r}: expected 1..{MAX_NAME} printable ASCII characters")
    return s.encode("ascii")


def _uint(v: Any, key: str, limit: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
        raise ValueError(f"options[{key!r}]={v!r}: expected an integer in 0..{limit - 1} "
                         "(it is stored in the codecx header)")
    return v


def canonical_json(v: Any) -> bytes:
    """Deterministic compact JSON bytes (sorted keys, ASCII); plain dicts/lists/scalars only."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def encode_options(options: Dict[str, Any], keys: Sequence[OptionKey] = OPTION_KEYS,
                   extra_id: int = EXTRA_ID) -> bytes:
    """The binary options block of `options` (layout in the module docstring); ValueError for a
    value its key cannot hold."""
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict, got {type(options).__name__}")
    if keys is not OPTION_KEYS:
        _check_registry(keys, extra_id)
    by_key = {k.key: k for k in keys}
    present, values = 0, {}
    for k in keys:
        if k.key not in options:
            continue
        v = options[k.key]
        if k.kind == "index":
            out = bytes([_uint(v, k.key, 256)])
        elif k.kind == "uint":
            n, buf = _uint(v, k.key, 2**32), bytearray()
            while True:
                buf.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
                n >>= 7
                if not n:
                    break
            out = bytes(buf)
        elif v in k.names:
            out = bytes([k.names.index(v)])
        else:
            name = _ascii(v, f"options[{k.key!r}]")
            out = bytes([NAME_ESCAPE, len(name)]) + name
        present |= 1 << k.id
        values[k.id] = out
    extra = sorted(set(options) - set(by_key))
    if extra:
        if len(extra) > 255:
            raise ValueError(f"{len(extra)} unregistered option keys; at most 255 fit")
        parts = [bytes([len(extra)])]
        for key in extra:
            kb, vb = _ascii(key, "option key"), canonical_json(options[key])
            if len(vb) > MAX_BLOCK:
                raise ValueError(f"options[{key!r}] takes {len(vb)} bytes as JSON; at most {MAX_BLOCK} fit")
            parts += [bytes([len(kb)]), kb, len(vb).to_bytes(2, "big"), vb]
        present |= 1 << extra_id
        values[extra_id] = b"".join(parts)
    mask = bytearray()
    while True:
        mask.append((present & 0x7F) | (0x80 if present > 0x7F else 0))
        present >>= 7
        if not present:
            break
    block = bytes(mask) + b"".join(values[i] for i in sorted(values))
    if len(block) > MAX_BLOCK:
        raise ValueError(f"options take {len(block)} bytes; at most {MAX_BLOCK} fit")
    return block


def decode_options(take: Callable[[int, str], bytes], keys: Sequence[OptionKey] = OPTION_KEYS,
                   extra_id: int = EXTRA_ID) -> Dict[str, Any]:
    """The options of a block read through `take(n, what)` (which raises on truncation);
    MalformedOptions for anything `encode_options` does not write."""
    present, shift = 0, 0
    for i in range(MAX_MASK_BYTES + 1):
        if i == MAX_MASK_BYTES:
            raise MalformedOptions(f"options mask longer than {MAX_MASK_BYTES} bytes")
        b = take(1, "options mask")[0]
        present |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    by_id = {k.id: k for k in keys}
    unknown = [i for i in range(7 * MAX_MASK_BYTES) if present >> i & 1 and i not in by_id and i != extra_id]
    if unknown:
        raise MalformedOptions(f"option id(s) {unknown} unknown to this codecx (the file was written "
                               "by a newer codecx, or it is corrupted)")
    options: Dict[str, Any] = {}
    for i in sorted(set(by_id) | {extra_id}):
        if not present >> i & 1:
            continue
        if i == extra_id:
            options.update(_decode_extra(take, {k.key for k in keys}))
            continue
        k = by_id[i]
        if k.kind == "index":
            options[k.key] = take(1, f"option {k.key}")[0]
        elif k.kind == "uint":
            n = 0
            for j in range(6):
                if j == 5:
                    raise MalformedOptions(f"option {k.key}: integer longer than 5 bytes")
                b = take(1, f"option {k.key}")[0]
                n |= (b & 0x7F) << 7 * j
                if not b & 0x80:
                    break
            if n >= 2**32:
                raise MalformedOptions(f"option {k.key}: {n} does not fit 32 bits")
            options[k.key] = n
        else:
            b = take(1, f"option {k.key}")[0]
            if b < len(k.names):
                options[k.key] = k.names[b]
            elif b == NAME_ESCAPE:
                options[k.key] = _read_ascii(take, f"option {k.key}")
            else:
                raise MalformedOptions(f"{k.key} id {b} is not known (ids 0..{len(k.names) - 1}: "
                                       f"{', '.join(k.names)}); the file was written by a newer "
                                       "codecx, or it is corrupted")
    return options


def _read_ascii(take: Callable[[int, str], bytes], what: str) -> str:
    n = take(1, f"{what} length")[0]
    raw = take(n, what)
    s = raw.decode("ascii", "replace")
    if not 1 <= n <= MAX_NAME or not (s.isascii() and s.isprintable()):
        raise MalformedOptions(f"{what}: {raw[:40]!r} is not 1..{MAX_NAME} printable ASCII characters")
    return s


def _decode_extra(take: Callable[[int, str], bytes], registered) -> Dict[str, Any]:
    """The block of unregistered keys: sorted, distinct, none of them registered, JSON values."""
    n = take(1, "unregistered options count")[0]
    if n == 0:
        raise MalformedOptions("empty block of unregistered options")
    out: Dict[str, Any] = {}
    last = None
    for _ in range(n):
        key = _read_ascii(take, "option key")
        if key in registered or (last is not None and key <= last):
            raise MalformedOptions(f"option key {key!r} out of order, repeated or registered")
        last = key
        raw = take(int.from_bytes(take(2, f"option {key} length"), "big"), f"option {key}")
        try:
            out[key] = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise MalformedOptions(f"option {key}: value is not JSON ({e})") from None
    return out
