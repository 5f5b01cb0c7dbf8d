#!/usr/bin/env python3
"""Checks the shipped filter module: its size budget, the proxy-wasm ABI
exports Envoy needs, and that it imports only from the proxy-wasm host
("env") and WASI."""
import argparse
import sys

REQUIRED_EXPORTS = {
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_configure",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_close",
    "proxy_on_done",
    "proxy_on_delete",
}
ALLOWED_IMPORT_MODULES = {"env", "wasi_snapshot_preview1"}


def leb(data, pos):
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def name(data, pos):
    n, pos = leb(data, pos)
    return data[pos:pos + n].decode(), pos + n


def sections(data):
    if data[:8] != b"\0asm\x01\0\0\0":
        raise SystemExit("not a wasm module (or not version 1)")
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, pos = leb(data, pos + 1)
        yield sid, data[pos:pos + size]
        pos += size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("wasm")
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--forbid", action="append", default=[],
                    help="a string that must not appear in the module (test-only code)")
    args = ap.parse_args()
    data = open(args.wasm, "rb").read()
    exports, imports = set(), set()
    for sid, body in sections(data):
        if sid == 7:  # export
            count, p = leb(body, 0)
            for _ in range(count):
                n, p = name(body, p)
                p += 1  # kind
                _, p = leb(body, p)
                exports.add(n)
        elif sid == 2:  # import
            count, p = leb(body, 0)
            for _ in range(count):
                module, p = name(body, p)
                field, p = name(body, p)
                kind = body[p]
                p += 1
                if kind == 0:
                    _, p = leb(body, p)
                elif kind == 1:
                    p += 1
                    flags, p = leb(body, p + 0)
                    _, p = leb(body, p)
                    if flags & 1:
                        _, p = leb(body, p)
                elif kind == 2:
                    flags, p = leb(body, p)
                    _, p = leb(body, p)
                    if flags & 1:
                        _, p = leb(body, p)
                elif kind == 3:
                    p += 2
                imports.add((module, field))
    problems = []
    if len(data) > args.budget:
        problems.append(f"size {len(data)} bytes exceeds the budget of {args.budget}")
    missing = sorted(REQUIRED_EXPORTS - exports)
    if missing:
        problems.append("missing exports: " + ", ".join(missing))
    foreign = sorted(f"{m}.{f}" for m, f in imports if m not in ALLOWED_IMPORT_MODULES)
    if foreign:
        problems.append("unexpected imports: " + ", ".join(foreign))
    for text in args.forbid:
        if text.encode() in data:
            problems.append(f"contains test-only code ({text!r})")
    if problems:
        print(f"{args.wasm}: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"{args.wasm}: {len(data)} bytes (budget {args.budget}), "
          f"{len(exports)} exports, {len(imports)} imports: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
