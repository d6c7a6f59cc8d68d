#!/usr/bin/env python3
"""Writes a few hand-made seed inputs into fuzz/corpus/<target>/ (well-formed frames the
fuzzer then mutates; the targets also start from nothing). Run from anywhere:
    python3 fuzz/seeds.py
Input layouts: see fuzz/README.md and qsocket/src/session/fuzzing.rs."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def ldc(payload: bytes) -> bytes:
    """A LengthDelimitedCodec frame: u32 big-endian length, then the payload."""
    return struct.pack(">I", len(payload)) + payload


def ws(opcode: int, payload: bytes, mask=b"\x01\x02\x03\x04", fin=True) -> bytes:
    """A client WebSocket frame (masked unless mask is None)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def rpc(kind=1, service=b"echo", method=b"Echo", metadata=b"", body=b"hi", rid=7) -> bytes:
    """A qsocket RPC frame (PROTOCOL.md)."""
    head = b"QS" + bytes([1, kind, 1, 0]) + struct.pack(">HQIBBHI", 0, rid, 1500, len(service),
                                                      len(method), len(metadata), len(body))
    return head + service + method + metadata + body


def md(*pairs) -> bytes:
    out = b""
    for k, v in pairs:
        out += bytes([len(k)]) + k + struct.pack(">H", len(v)) + v
    return out


SEEDS = {
    "rpc_frame": [
        b"\x00" + rpc(),
        b"\x00" + rpc(metadata=md((b"trace", b"abc"), (b"k", b""))) + rpc(kind=4, service=b"", method=b"", body=b""),
        b"\x03" + rpc(metadata=md((b"a", b"b")), body=b"x" * 100),  # small limits, 1-byte chunks
        b"\x16" + rpc() * 3 + rpc()[:20],                         # 6-byte chunks, truncated tail
        b"\x01" + rpc(body=b"y" * 300),                           # body over the small limit
    ],
    "session_stream": [
        bytes([0, 255, 255, 255]) + ldc(b"hello") + ldc(b"") + ldc(b"x" * 100),
        bytes([0x07, 0, 1, 2]) + ldc(b"a" * 60) * 3 + ldc(b"b" * 61),
        bytes([0x12, 3, 7, 15]) + ldc(b"c" * 200) * 20,
        bytes([0x01, 255, 0, 9]) + ldc(b"d" * 3000) + ldc(b"e") + b"\x00\x00",
        bytes([0x04, 0, 0, 0]) + ldc(b"f" * 40) * 10,
    ],
    "websocket": [
        bytes([0, 255, 255, 255]) + ws(2, ldc(b"hello")) + ws(9, b"p") + ws(1, ldc(b"hi"))
        + ws(8, struct.pack(">H", 1000)),
        bytes([0x08, 4, 4, 4]) + ws(2, b"hello") * 3 + ws(10, b"") + ws(2, b"tail"),
        bytes([0x0b, 0, 1, 2]) + ws(2, b"z" * 50) + ws(2, b"z" * 100),
        bytes([0x0c, 9, 9, 9]) + ws(2, b"ab", fin=False) + ws(0, b"cd", fin=False) + ws(9, b"") + ws(0, b"ef", fin=True),
        bytes([0x08, 255, 255, 255]) + ws(2, b"unmasked", mask=None),
        bytes([0x1a, 1, 2, 3]) + ws(2, ldc(b"q" * 500)) * 4 + ws(8, b""),
    ],
}

for target, seeds in SEEDS.items():
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i}"), "wb") as f:
            f.write(s)
    print(f"{target}: {len(seeds)} seeds in {d}")
