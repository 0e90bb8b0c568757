"""The `metadata_props` of an ONNX file, read without onnx or onnxruntime.

OpenVINO reads an ONNX graph but does not expose its metadata, and the export records there which
weights and labels the graph was made from (`schemas.artifact.ONNX_META_*`), the check that keeps
a stale graph from scoring silently wrong. A `ModelProto` is a protobuf message whose field 14 is
`repeated StringStringEntryProto metadata_props` (key = field 1, value = field 2); this module
walks the top-level fields only, skipping the others (the graph) by their length.

`check_exported_from` is the check itself, shared by the ONNX Runtime and OpenVINO backends.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Mapping
from pathlib import Path

from schemas.artifact import ONNX_META_LABELS, ONNX_META_WEIGHTS, WEIGHTS_FILE, weights_version
from worker.backends.backend import ModelLoadError

METADATA_PROPS = 14
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class OnnxMetadataError(ValueError):
    """The file is not a well-formed protobuf message at its top level."""


def _varint(data: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise OnnxMetadataError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | mmap.mmap, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, payload start, payload end) of each field in data[start:end]."""
    fields, pos = [], start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, after = _varint(data, pos)
            fields.append((number, wire, pos, after))
            pos = after
        elif wire == LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise OnnxMetadataError("a field runs past the end of the message")
            fields.append((number, wire, pos, pos + size))
            pos += size
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            fields.append((number, wire, pos, pos + size))
            pos += size
        else:
            raise OnnxMetadataError(f"unsupported wire type {wire}")
    if pos != end:
        raise OnnxMetadataError("a field runs past the end of the message")
    return fields


def parse_metadata(data: bytes | mmap.mmap) -> dict[str, str]:
    """The metadata of a serialized `ModelProto` (the last value wins for a repeated key)."""
    metadata: dict[str, str] = {}
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number != METADATA_PROPS or wire != LENGTH_DELIMITED:
            continue
        entry = {n: bytes(data[s:e]) for n, w, s, e in _fields(data, start, end) if w == 2}
        try:
            metadata[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        except UnicodeDecodeError:
            raise OnnxMetadataError("a metadata entry is not UTF-8") from None
    return metadata


def read_metadata(path: Path) -> dict[str, str]:
    """`parse_metadata` of the file at `path`; `OSError` or `OnnxMetadataError`."""
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            raise OnnxMetadataError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return parse_metadata(data)


def check_exported_from(
    path: Path, meta: Mapping[str, str], model_dir: Path, labels: tuple[str, ...], hint: str
) -> None:
    """Refuse a graph whose metadata says it was exported with other labels or from other
    weights than the artifact's (`hint`: how to export it again)."""
    if ONNX_META_LABELS in meta:
        try:
            exported = tuple(json.loads(meta[ONNX_META_LABELS]))
        except (ValueError, TypeError):
            raise ModelLoadError(f"{path} has unreadable label metadata: {hint}") from None
        if exported != tuple(labels):
            raise ModelLoadError(
                f"{path} was exported with labels {list(exported)}, "
                f"the artifact names {list(labels)}: {hint}"
            )
    weights = model_dir / WEIGHTS_FILE
    if ONNX_META_WEIGHTS in meta and weights.is_file():
        current = weights_version(weights)
        if meta[ONNX_META_WEIGHTS] != current:
            raise ModelLoadError(
                f"{path} was exported from weights {meta[ONNX_META_WEIGHTS]}, "
                f"but {WEIGHTS_FILE} is {current}: export again ({hint})"
            )
