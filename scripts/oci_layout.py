#!/usr/bin/env python3
"""Package a Wasm module as an OCI image that Istio's WasmPlugin can pull,
without a container engine (Python standard library only).

The image is the "compat" variant of the Wasm image specification, which
Istio reads first: an OCI image manifest with one
`application/vnd.oci.image.layer.v1.tar+gzip` layer whose tar holds the
module as `plugin.wasm`, and the annotation
`module.wasm.image/variant: compat`. It is what `docker build` makes of
envoy/istio/Dockerfile, so registries and tools (skopeo, crane, oras, docker)
handle it like any image.

Output, both optional:
- an OCI image layout directory (oci-layout, index.json, blobs/sha256/...),
  the tag recorded as `org.opencontainers.image.ref.name`;
- the same layout as one tarball (what skopeo calls `oci-archive:`).

The output is reproducible: the same module, tag and zlib give the same
bytes (no timestamps; tar entries owned by 0:0, with fixed modes).

Usage:
    oci_layout.py WASM --layout DIR [--tar FILE] [--tag TAG]

Push it with, for example:
    skopeo copy oci-archive:FILE docker://REGISTRY/mcp-ratelimit:TAG
    crane push DIR REGISTRY/mcp-ratelimit:TAG
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_MAGIC = b"\0asm"
# A tag as the OCI distribution spec allows it.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar with one regular file, plugin.wasm."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def build_blobs(wasm: bytes, tag: str) -> tuple[dict[str, bytes], dict]:
    """Every blob by digest, and the index.json document."""
    tar = layer_tar(wasm)
    # mtime=0 and no file name in the header keep the gzip stream reproducible.
    layer = gzip.compress(tar, compresslevel=9, mtime=0)
    config = canonical_json(
        {
            # Go's names for the WebAssembly System Interface target; the
            # module runs on any proxy's host.
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(CONFIG, config),
            "layers": [descriptor(LAYER, layer)],
            "annotations": {
                "module.wasm.image/variant": "compat",
                "org.opencontainers.image.title": "mcp-ratelimit",
            },
        }
    )
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            descriptor(MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": tag})
        ],
    }
    blobs = {digest(b): b for b in (layer, config, manifest)}
    return blobs, index


def layout_files(blobs: dict[str, bytes], index: dict) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file of the layout, in a fixed order."""
    files = [
        ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", canonical_json(index)),
    ]
    for d in sorted(blobs):
        algorithm, hex_digest = d.split(":", 1)
        files.append((f"blobs/{algorithm}/{hex_digest}", blobs[d]))
    return files


def write_layout(path: Path, files: list[tuple[str, bytes]]) -> None:
    if path.exists():
        # Replace an earlier layout, never anything else.
        if not path.is_dir() or (any(path.iterdir()) and not (path / "oci-layout").is_file()):
            raise SystemExit(f"{path}: exists and is not an OCI layout; not overwriting it")
        shutil.rmtree(path)
    for rel, data in files:
        dest = path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> None:
    dirs = sorted({str(Path(rel).parent) for rel, _ in files} - {"."})
    # Parents before children: "blobs" sorts before "blobs/sha256".
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info)
        for rel, data in files:
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("wasm", type=Path, help="the Wasm module (e.g. target/mcp_ratelimit.wasm)")
    p.add_argument("--layout", type=Path, help="write an OCI image layout to this directory")
    p.add_argument("--tar", type=Path, help="write the layout as one tarball to this file")
    p.add_argument("--tag", default="latest", help="tag recorded in index.json (default: latest)")
    args = p.parse_args(argv)
    if args.layout is None and args.tar is None:
        p.error("give --layout, --tar or both")
    if not TAG_RE.match(args.tag):
        p.error(f"invalid tag {args.tag!r}")
    wasm = args.wasm.read_bytes()
    if not wasm.startswith(WASM_MAGIC):
        p.error(f"{args.wasm} is not a WebAssembly module")

    blobs, index = build_blobs(wasm, args.tag)
    files = layout_files(blobs, index)
    if args.layout is not None:
        write_layout(args.layout, files)
    if args.tar is not None:
        write_tar(args.tar, files)
    manifest = index["manifests"][0]
    print(f"{args.wasm} -> OCI image {manifest['digest']} (tag {args.tag})", end="")
    print("".join(f", {x}" for x in (args.layout, args.tar) if x is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
