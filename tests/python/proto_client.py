#!/usr/bin/env python3
"""Calls demo.greeter.Greeter (idl/demo/greeter.proto) with messages made by Python's own
`protobuf` package: encoded as protobuf, and as proto3 JSON by `json_format` (64-bit integers
as strings, lowerCamelCase names, bytes as base64, a Timestamp as RFC 3339). The messages are
built at run time from the descriptor set qsocket-build wrote, so no protoc is needed.

Usage: proto_client.py HOST PORT DESCRIPTOR_SET — prints "python proto client: ok" and exits 0;
exits 1 on any mismatch, 2 if the protobuf package is missing.
"""
import os
import socket
import sys

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
except ImportError:
    print("python proto client: the protobuf package is missing (python3 -m pip install protobuf)")
    sys.exit(2)

# The frame format, from the protocol client beside this file (written from PROTOCOL.md).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rpc_client import REQUEST, RESPONSE, frame, read_frame  # noqa: E402

PROTOBUF, JSON = 1, 2
SERVICE = b"demo.greeter.Greeter"


def call(sock, codec, req_id, method, body):
    sock.sendall(frame(REQUEST, codec, req_id, 5000, SERVICE, method, body=body))
    f = read_frame(sock)
    check(f["kind"] == RESPONSE and f["id"] == req_id, "a response to the request")
    check(f["status"] == 0, f"status {f['status']}: {f['body']!r}")
    check(f["codec"] == codec, "answered in the codec asked in")
    return f["body"]


def check(cond, what):
    if not cond:
        print(f"python proto client: FAILED: {what}")
        sys.exit(1)


def main():
    host, port, fds_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fds = descriptor_pb2.FileDescriptorSet()
    with open(fds_path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf 4.21 and later
        cls = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    else:
        factory = message_factory.MessageFactory(pool)
        cls = lambda name: factory.GetPrototype(pool.FindMessageTypeByName(name))
    AddRequest, AddReply = cls("demo.greeter.AddRequest"), cls("demo.greeter.AddReply")
    HelloRequest, HelloReply = cls("demo.greeter.HelloRequest"), cls("demo.greeter.HelloReply")

    big = 9007199254740993  # 2^53 + 1: not exact as a JSON number
    with socket.create_connection((host, port), timeout=20) as sock:
        # protobuf, both ways
        reply = AddReply()
        reply.ParseFromString(call(sock, PROTOBUF, 1, b"Add", AddRequest(a=big, b=1).SerializeToString()))
        check(reply.sum == big + 1, f"protobuf sum {reply.sum}")
        check(reply.digest == (big + 1).to_bytes(8, "big"), f"protobuf digest {reply.digest!r}")

        # proto3 JSON as json_format writes it (int64 as a string), both ways
        text = json_format.MessageToJson(AddRequest(a=big, b=1))
        check('"9007199254740993"' in text, f"json_format writes int64 as a string: {text}")
        reply = json_format.Parse(call(sock, JSON, 2, b"Add", text.encode()), AddReply())
        check(reply.sum == big + 1, f"json sum {reply.sum}")
        check(reply.digest == (big + 1).to_bytes(8, "big"), f"json digest (base64) {reply.digest!r}")

        # lowerCamelCase and a well-known type (Timestamp as RFC 3339)
        hello = HelloRequest(name="py")
        hello.asked_at.FromSeconds(1_700_000_000)
        text = json_format.MessageToJson(hello)
        check('"askedAt"' in text, f"lowerCamelCase: {text}")
        reply = json_format.Parse(call(sock, JSON, 3, b"SayHello", text.encode()), HelloReply())
        check(reply.message == "hello, py at 1700000000", f"hello {reply.message!r}")
        reply = HelloReply()
        reply.ParseFromString(call(sock, PROTOBUF, 4, b"SayHello", hello.SerializeToString()))
        check(reply.message == "hello, py at 1700000000", f"hello {reply.message!r}")
    print("python proto client: ok")


if __name__ == "__main__":
    main()
