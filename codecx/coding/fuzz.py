"""Mutation fuzzing of the codecx decoder: real files of tiny codecs (scalar, lattice, latent
shift, serial context model, each other latent transform), mutated and decoded in a worker process
with a per-case timeout; every outcome must be a decoded image or a `BitstreamError`.

    python -m codecx.coding.fuzz --cases 1000            # every setup, a summary table
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from codecx.conf import CONF_DIR

# name -> (model option, quantizer option, latent transform option)
SETUPS: Dict[str, Tuple[str, str, Optional[str]]] = {
    "scalar": ("mbt_mean", "noise", None),
    "hex": ("mbt_mean", "hex", None),
    "shift": ("mbt_mean", "noise", "latent_shift"),
    "serial": ("mbt", "noise", None),
    "factorized": ("bmshj_factorized", "noise", None),
}


def transform_setups() -> Dict[str, Tuple[str, str, Optional[str]]]:
    """One setup per latent transform of conf/transform (mbt_mean, scalar) but the latent shift
    (setup "shift")."""
    d = Path(CONF_DIR) / "transform"
    names = sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
    return {f"transform={n}": ("mbt_mean", "noise", n) for n in names if n != SETUPS["shift"][2]}


def _node(group: str, name: str) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml"), resolve=False)


def build_setup(name: str, seed: int = 0, size: Tuple[int, int] = (64, 96)):
    """(codec, fingerprint, codecx file bytes of a random image) for setup `name`."""
    import torch

    from codecx.coding.container import encode_image
    from codecx.eval.load import fingerprint_of, prepare
    from codecx.models.build import build_codec

    model, quantizer, transform = {**SETUPS, **transform_setups()}[name]
    torch.manual_seed(seed)
    m = _node("model", model)
    m.update(N=8, M=None if model.startswith("cheng") else 12, weights=None)
    config: Dict[str, Any] = {"model": m, "quantizer": _node("quantizer", quantizer), "lmbda": 0.0067}
    if transform:
        config["transform"] = _node("transform", transform)
    codec = build_codec(config)
    with torch.no_grad():  # latents of a few hundred bytes, so that mutations reach the coder
        codec.backbone.g_a[-1].weight.mul_(30)
    codec = prepare(codec)
    fp = fingerprint_of(codec, config)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    options = {"quantizer": quantizer, **({"transform": transform} if transform else {})}
    return codec, fp, encode_image(codec, x, fp, options)


def _options_span(data: bytes) -> Tuple[int, int]:
    """(start, end) of the (valid) file's options block; the stream count byte follows."""
    from codecx.coding.container import OPTIONS_OFFSET, unpack
    from codecx.coding.options import encode_options

    return OPTIONS_OFFSET, OPTIONS_OFFSET + len(encode_options(unpack(data)[0].options))


def _fix_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One mutation of a codecx file; half of them recompute the CRC so that the header checks
    and the entropy decoder see the damage (else the CRC alone would reject it)."""
    body = bytearray(data[:-4])
    kind = rng.randrange(8)
    if kind == 0:  # bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(body))
            body[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # random bytes overwritten
        for _ in range(rng.randint(1, 16)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif kind == 2:  # truncated
        return bytes(data[: rng.randrange(len(data))])
    elif kind == 3:  # extended
        return bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 4:  # sizes forged: any 16-bit value in one of the six size fields
        off = 13 + 2 * rng.randrange(6)
        body[off : off + 2] = struct.pack(">H", rng.choice([0, 1, 2, 63, 64, 65, 4096, 65535,
                                                            rng.randrange(65536)]))
    elif kind == 5:  # image and latent sizes forged consistently (a larger image, garbage streams)
        h, w = rng.randint(1, 192), rng.randint(1, 192)
        ph, pw = -(-h // 64) * 64, -(-w // 64) * 64
        body[13:25] = struct.pack(">6H", h, w, ph // 16, pw // 16, ph // 64, pw // 64)
    elif kind == 6:  # stream bytes replaced by random ones
        for i in range(_options_span(data)[1] + 1, len(body)):
            if rng.random() < 0.5:
                body[i] = rng.randrange(256)
    else:  # options block replaced (format 2: presence mask, then values; see codecx.coding.options)
        start, end = _options_span(data)
        opts = rng.choice([b"\x04\xff\x11../model/mbt_mean", b"\x09\x63\x01", b"\x01\xff", b"\x04\x07",
                           b"\x20\x00", b"\x80\x80\x80\x80", b"\x40\x01\x0bshift_index\x00\x011",
                           b"\x40\x01\x01a\x00\x04[1,2", b"\x40\x01\x01a\xff\xff" + b"[" * 50,
                           b"\x0a\xff\x03\x00\x01\x02\x01",
                           bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))])
        body[start:end] = opts
    return _fix_crc(bytes(body)) if rng.random() < 0.5 else bytes(body) + data[-4:]


def _worker(name: str, seed: int, start: int, cases: int, conn, stderr_path: str) -> None:
    """Decode cases start.. of setup `name`; send (index, outcome, seconds, peak RSS MiB: the
    whole process, ~1 GiB of it torch and Lightning imports)."""
    import torch

    torch.set_num_threads(1)
    from codecx.coding.container import BitstreamError, decode_image

    codec, fp, data = build_setup(name, seed)
    # from here on, whatever reaches stderr comes from decoding (e.g. a Rust panic message)
    sys.stderr.flush()
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    conn.send("ready")  # per-case timeouts start now (imports and the build can be slow)
    for i in range(start, cases):
        rng = random.Random(f"{name}/{seed}/{i}")
        bad = mutate(data, rng)
        t0 = time.perf_counter()
        try:
            decode_image(codec, bad, fp)
            outcome = "decoded"
        except BitstreamError:
            outcome = "error"
        except BaseException as e:  # noqa: BLE001 - what the fuzz looks for
            outcome = f"uncaught {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send((i, outcome, time.perf_counter() - t0, rss))
    conn.send(None)


def fuzz(name: str, cases: int = 1000, seed: int = 0, timeout: float = 30.0,
         workdir: Optional[str] = None) -> Dict[str, Any]:
    """Fuzz setup `name` with `cases` mutations in a worker process; a case that runs longer
    than `timeout` seconds counts as a hang (the worker is restarted after it). Returns counts
    of decoded / clean errors / uncaught / hangs, the slowest case, peak RSS and stderr bytes."""
    import tempfile

    ctx = mp.get_context("spawn")
    stats: Dict[str, Any] = {"setup": name, "cases": cases, "decoded": 0, "errors": 0, "hangs": 0,
                             "uncaught": [], "max_case_s": 0.0, "peak_rss_mib": 0.0}
    tmpdir = tempfile.mkdtemp(dir=workdir)
    err_path = os.path.join(tmpdir, "stderr.txt")
    start = 0
    while start < cases:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(name, seed, start, cases, child, err_path), daemon=True)
        p.start()
        child.close()
        if not parent.poll(900) or parent.recv() != "ready":
            p.kill()
            p.join()
            raise RuntimeError(f"fuzz worker for {name} did not start (exit code {p.exitcode})")
        wait = timeout
        while True:
            if not parent.poll(wait):
                if p.is_alive():
                    stats["hangs"] += 1
                    stats.setdefault("hang_cases", []).append(start)
                    p.kill()
                elif start < cases:
                    stats["uncaught"].append(f"case {start}: worker died (exit code {p.exitcode})")
                p.join()
                start += 1
                break
            msg = parent.recv()
            if msg is None:
                start = cases
                p.join()
                break
            i, outcome, secs, rss = msg
            if secs > timeout:
                stats["hangs"] += 1
                stats.setdefault("hang_cases", []).append(i)
            stats["max_case_s"] = max(stats["max_case_s"], secs)
            stats["peak_rss_mib"] = max(stats["peak_rss_mib"], rss)
            if outcome == "decoded":
                stats["decoded"] += 1
            elif outcome == "error":
                stats["errors"] += 1
            else:
                stats["uncaught"].append(f"case {i}: {outcome}")
            start = i + 1
            wait = timeout
        parent.close()
    stats["stderr_bytes"] = os.path.getsize(err_path) if os.path.exists(err_path) else 0
    stats["stderr_head"] = Path(err_path).read_text(errors="replace")[:500] if stats["stderr_bytes"] else ""
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--only", nargs="*", help="setup names (default: all)")
    a = ap.parse_args(argv)
    names = a.only or [*SETUPS, *transform_setups()]
    print("| setup | files | decoded | clean errors | uncaught | hangs | slowest case s | peak RSS MiB "
          "| stderr bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for n in names:
        s = fuzz(n, a.cases, a.seed, a.timeout)
        bad += len(s["uncaught"]) + s["hangs"]
        print(f"| {n} | {s['cases']} | {s['decoded']} | {s['errors']} | {len(s['uncaught'])} | {s['hangs']} "
              f"| {s['max_case_s']:.2f} | {s['peak_rss_mib']:.0f} | {s['stderr_bytes']} |", flush=True)
        for u in s["uncaught"][:5]:
            print(f"    {u}", file=sys.stderr)
        if s["hangs"]:
            print(f"    {n}: hang(s) at case(s) {s.get('hang_cases')}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
