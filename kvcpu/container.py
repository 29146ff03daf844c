"""The checksummed, versioned framing shared by CompressedKV and Snapshot bytes.

Layout, little-endian:

    0   magic        8 bytes (b"KVCPUCKV" or b"KVCPUSNP")
    8   version      u32
    12  header_len   u32
    16  body_len     u64
    24  checksum     u64, xxh3_64 over bytes [0, 24) and [32, end)
    32  header       header_len bytes of UTF-8 JSON, space-padded so the body starts on 64 bytes;
                     its "sections" lists the lengths of the body's parts
    ..  body         body_len bytes: the sections, each zero-padded to a multiple of 64 bytes,
                     so that every section starts 64-byte aligned within the file

Every check runs before anything is interpreted: magic, version, length, checksum,
then the header's own shape. Each failure raises its own kvcpu.errors exception.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import xxhash

from .errors import (
    NotASnapshotError,
    SnapshotChecksumError,
    SnapshotHeaderError,
    SnapshotTruncatedError,
    SnapshotVersionError,
)

FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQQ")
MAX_HEADER_BYTES = 64 << 20


ALIGN = 64


def _pad(n: int) -> int:
    return -n % ALIGN


def pack(magic: bytes, header: dict, sections: list) -> bytes:
    """Frame a JSON header and byte sections (any buffer objects) into checksummed bytes."""
    views = [memoryview(s).cast("B") for s in sections]
    header = dict(header, sections=[v.nbytes for v in views])
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * _pad(_PREFIX.size + len(head))
    parts = []
    for v in views:
        parts += [v, bytes(_pad(v.nbytes))]
    body_len = sum(memoryview(p).nbytes for p in parts)
    h = xxhash.xxh3_64()
    prefix = _PREFIX.pack(magic, FORMAT_VERSION, len(head), body_len, 0)
    h.update(prefix[:24])
    h.update(head)
    for p in parts:
        h.update(p)
    prefix = _PREFIX.pack(magic, FORMAT_VERSION, len(head), body_len, h.intdigest())
    return b"".join([prefix, head, *parts])


def unpack(buf, magic: bytes, what: str, verify: bool = True) -> tuple[dict, list[np.ndarray]]:
    """Check and split framed bytes into (header, sections as uint8 views of buf). verify=False
    skips only the checksum, for bytes verified or made in this process already."""
    try:
        data = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise NotASnapshotError(f"{what}: not a bytes-like object ({exc})") from None
    if len(data) < 8 or bytes(data[:8]) != magic:
        found = bytes(data[:8])
        raise NotASnapshotError(f"not a kvcpu {what}: magic {found!r}, expected {magic!r}")
    if len(data) < _PREFIX.size:
        raise SnapshotTruncatedError(f"{what} truncated: {len(data)} bytes, its prefix alone is {_PREFIX.size}")
    _, version, head_len, body_len, checksum = _PREFIX.unpack_from(data[: _PREFIX.size].tobytes())
    if version != FORMAT_VERSION:
        newer = "a newer" if version > FORMAT_VERSION else "an unknown"
        raise SnapshotVersionError(
            f"{what} has format version {version}, {newer} version than this kvcpu reads ({FORMAT_VERSION})"
        )
    end = _PREFIX.size + head_len + body_len
    if len(data) < end:
        raise SnapshotTruncatedError(f"{what} truncated: {len(data)} bytes of the {end} its prefix declares")
    if len(data) > end:
        raise SnapshotHeaderError(f"{what} has {len(data) - end} bytes after its declared end")
    if verify:
        h = xxhash.xxh3_64()
        h.update(data[:24])
        h.update(data[_PREFIX.size :])
        if h.intdigest() != checksum:
            raise SnapshotChecksumError(f"{what} is corrupt: checksum mismatch")
    header = _parse_header(data[_PREFIX.size : _PREFIX.size + head_len], what)
    sizes = header.get("sections")
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes) \
            or sum(n + _pad(n) for n in sizes) != body_len:
        raise SnapshotHeaderError(f"{what} header's section sizes do not add up to its body")
    sections, off = [], _PREFIX.size + head_len
    for n in sizes:
        sections.append(data[off : off + n])
        off += n + _pad(n)
    return header, sections


def peek(f, magic: bytes, what: str) -> tuple[dict, bytes]:
    """Read only the header and the first section from an open file: enough to index a file
    without reading its payload. Not checksummed; a full read (unpack) verifies everything."""
    raw = f.read(_PREFIX.size)
    if len(raw) < 8 or raw[:8] != magic:
        raise NotASnapshotError(f"not a kvcpu {what}: magic {raw[:8]!r}, expected {magic!r}")
    if len(raw) < _PREFIX.size:
        raise SnapshotTruncatedError(f"{what} truncated inside its prefix")
    _, version, head_len, body_len, _ = _PREFIX.unpack(raw)
    if version != FORMAT_VERSION:
        raise SnapshotVersionError(f"{what} has format version {version}; this kvcpu reads {FORMAT_VERSION}")
    head = f.read(head_len)
    if len(head) < head_len:
        raise SnapshotTruncatedError(f"{what} truncated inside its header")
    header = _parse_header(np.frombuffer(head, dtype=np.uint8), what)
    sizes = header.get("sections")
    if not isinstance(sizes, list) or not sizes or not isinstance(sizes[0], int) or sizes[0] < 0:
        raise SnapshotHeaderError(f"{what} header lists no sections")
    first = f.read(sizes[0])
    if len(first) < sizes[0]:
        raise SnapshotTruncatedError(f"{what} truncated inside its first section")
    return header, first


def _parse_header(raw: np.ndarray, what: str) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise SnapshotHeaderError(f"{what} header of {len(raw)} bytes is implausibly large")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotHeaderError(f"{what} header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SnapshotHeaderError(f"{what} header is not a JSON object")
    return header


def field(header: dict, key: str, kind, what: str):
    """A required header field of the given type, or SnapshotHeaderError."""
    value = header.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SnapshotHeaderError(f"{what} header field {key!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value
