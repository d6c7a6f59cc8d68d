#!/usr/bin/env python3
"""A qsocket RPC client written from PROTOCOL.md alone (standard library only).

Usage: rpc_client.py HOST PORT   — talks to a server offering test.Echo/Echo over TCP,
checks the answers, prints "python rpc client: ok" and exits 0; exits 1 on any mismatch.
"""
import json
import socket
import struct
import sys

HEADER = struct.Struct(">2sBBBBHQIBBHI")  # 28 bytes, big-endian
assert HEADER.size == 28

REQUEST, RESPONSE, ONEWAY, HEARTBEAT = 1, 2, 3, 4
JSON = 2


def frame(kind, codec, req_id, timeout_ms, service=b"", method=b"", metadata=b"", body=b"", flags=0, status=0):
    head = HEADER.pack(b"QS", 1, kind, codec, flags, status, req_id, timeout_ms,
                       len(service), len(method), len(metadata), len(body))
    return head + service + method + metadata + body


def metadata(**entries):
    out = b""
    for k, v in entries.items():
        k, v = k.encode(), v.encode()
        out += struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("server closed the connection")
        data += chunk
    return data


def read_frame(sock):
    magic, version, kind, codec, flags, status, req_id, timeout, s, m, d, b = HEADER.unpack(read_exact(sock, 28))
    if magic != b"QS" or version != 1:
        raise ValueError(f"bad frame start {magic!r} v{version}")
    rest = read_exact(sock, s + m + d + b)
    return {"kind": kind, "codec": codec, "flags": flags, "status": status, "id": req_id,
            "body": rest[s + m + d:]}


def check(cond, what):
    if not cond:
        print(f"python rpc client: FAILED: {what}")
        sys.exit(1)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    with socket.create_connection((host, port), timeout=20) as sock:
        # Three requests written back to back in one send; answers may come in any order.
        texts = {11: "first", 12: "second", 13: "third"}
        out = b""
        for req_id, text in texts.items():
            body = json.dumps({"text": text}).encode()
            out += frame(REQUEST, JSON, req_id, 5000, b"test.Echo", b"Echo", metadata(trace="py"), body)
        sock.sendall(out)
        seen = {}
        while len(seen) < len(texts):
            f = read_frame(sock)
            check(f["kind"] == RESPONSE, f"kind {f['kind']}")
            check(f["status"] == 0, f"status {f['status']}: {f['body']!r}")
            check(f["codec"] == JSON, "answered in the codec asked in")
            seen[f["id"]] = json.loads(f["body"])["text"]
        check(seen == texts, f"answers {seen}")

        # An unknown method: status 12 (unimplemented) naming it.
        sock.sendall(frame(REQUEST, JSON, 14, 5000, b"test.Echo", b"Missing", body=b"{}"))
        f = read_frame(sock)
        check(f["id"] == 14 and f["status"] == 12, f"unknown method status {f['status']}")
        check(b"Missing" in f["body"], f"message names the method: {f['body']!r}")

        # A body that is not the request type: status 3 (invalid argument).
        sock.sendall(frame(REQUEST, JSON, 15, 5000, b"test.Echo", b"Echo", body=b"[1,2"))
        f = read_frame(sock)
        check(f["id"] == 15 and f["status"] == 3, f"bad body status {f['status']}")

        # A heartbeat is answered with the reply flag and the same id.
        sock.sendall(frame(HEARTBEAT, 0, 99, 0))
        f = read_frame(sock)
        check(f["kind"] == HEARTBEAT and f["flags"] & 1 and f["id"] == 99, f"heartbeat reply {f}")

        # An unknown kind is skipped; the next request is still answered.
        sock.sendall(frame(42, 0, 0, 0, body=b"from the future") +
                     frame(REQUEST, JSON, 16, 5000, b"test.Echo", b"Echo", body=b'{"text":"after"}'))
        f = read_frame(sock)
        check(f["id"] == 16 and json.loads(f["body"])["text"] == "after", f"after unknown kind {f}")
    print("python rpc client: ok")


if __name__ == "__main__":
    main()
