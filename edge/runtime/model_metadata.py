"""A bundle's facts inside its ``model.tflite``: the TFLite metadata entry ``keras_transformer``.

The manifest says which tokenizer and vocabulary go with the model, but a manifest can be
edited and re-sealed. The same facts are written into the model file itself when the bundle is
made (a TFLite ``Model.metadata`` entry holding JSON), so a tokenizer from another model is
refused even then::

    {"format_version": 2, "kind": "seq2seq", "vocabulary_size": 6000, "quantization": ...,
     "special_tokens": {...}, "max_lengths": {...}, "labels": null, "decoding": {...},
     "tokenizer_sha256": "...", "model_sha256": "..."}

``model_sha256`` is the sha256 of the model file itself with those 64 hex digits read as
``"0" * 64``: any change to the file that this writer did not make (a damaged weight, a
re-sealed manifest over another model) is found before an interpreter sees the file.

Reading is written here by hand with the standard library: the runtime must not need the
``flatbuffers`` package or TFLite's generated schema, which a tflite-runtime install lacks, and
it reads two fields of the schema (``Model.buffers`` = field 4, ``Model.metadata`` = field 6;
``Metadata`` = name 0, buffer 1; ``Buffer`` = data 0, offset 1, size 2). Every offset is bounds
checked: a damaged file is a ``ValueError``, never a crash. Writing (where bundles are made)
uses the schema that ai-edge-litert ships.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

NAME = "keras_transformer"
_IDENTIFIER = b"TFL3"


class _Reader:
    """Bounds-checked little-endian reads of a flatbuffer."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data

    def _unpack(self, fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"offset {at} is outside the file")
        return struct.unpack_from(fmt, self.data, at)[0]

    def table(self, at: int) -> tuple[int, int]:
        """``(table position, vtable position)`` of the table at ``at``."""
        vtable = at - self._unpack("<i", at)
        return at, vtable

    def field(self, table: tuple[int, int], index: int) -> int | None:
        """Position of a table's field, or None when absent."""
        at, vtable = table
        size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return at + offset if offset else None

    def indirect(self, at: int) -> int:
        return at + self._unpack("<I", at)

    def vector(self, at: int) -> tuple[int, int]:
        """``(first element position, length)`` of the vector the field at ``at`` points to."""
        start = self.indirect(at)
        length = self._unpack("<I", start)
        if start + 4 + length > len(self.data):
            raise ValueError("a vector runs past the end of the file")
        return start + 4, length

    def tables(self, at: int) -> list[tuple[int, int]]:
        first, length = self.vector(at)
        return [self.table(self.indirect(first + 4 * i)) for i in range(length)]

    def string(self, at: int) -> str:
        first, length = self.vector(at)
        return bytes(self.data[first : first + length]).decode("utf-8", "replace")

    def uint(self, at: int | None, fmt: str = "<I") -> int:
        return 0 if at is None else self._unpack(fmt, at)


def read_metadata(path: str | Path) -> dict[str, tuple[int, bytes]]:
    """Every metadata entry of a .tflite file: ``{name: (file offset, bytes)}``;
    ``ValueError`` if the file is damaged."""
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ValueError(f"{path}: empty") from None
        with data:
            spans = _entries(_Reader(data), path)
            return {name: (start, bytes(data[start:end])) for name, (start, end) in spans.items()}


def _entries(reader: _Reader, path: str | Path) -> dict[str, tuple[int, int]]:
    if len(reader.data) < 8 or bytes(reader.data[4:8]) != _IDENTIFIER:
        raise ValueError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = reader.table(reader.uint(0))
        buffers_at, metadata_at = reader.field(model, 4), reader.field(model, 6)
        if metadata_at is None:
            return {}
        buffers = reader.tables(buffers_at) if buffers_at is not None else []
        entries = {}
        for entry in reader.tables(metadata_at):
            name_at = reader.field(entry, 0)
            name = reader.string(name_at) if name_at is not None else ""
            index = reader.uint(reader.field(entry, 1))
            if index >= len(buffers):
                raise ValueError(f"metadata {name!r} names buffer {index} of {len(buffers)}")
            entries[name] = _buffer_span(reader, buffers[index])
        return entries
    except (ValueError, struct.error) as error:
        raise ValueError(f"{path}: damaged TFLite file ({error})") from None


def _buffer_span(reader: _Reader, buffer: tuple[int, int]) -> tuple[int, int]:
    data_at = reader.field(buffer, 0)
    if data_at is not None:
        first, length = reader.vector(data_at)
        return first, first + length
    offset, size = (
        reader.uint(reader.field(buffer, 1), "<Q"),
        reader.uint(reader.field(buffer, 2), "<Q"),
    )
    if offset + size > len(reader.data):
        raise ValueError("a buffer runs past the end of the file")
    return offset, offset + size


def bundle_facts(path: str | Path) -> dict[str, Any] | None:
    """The ``keras_transformer`` entry of a model file, parsed and its ``model_sha256`` checked
    against the file; None when it has none. ``ValueError`` for a damaged or altered file."""
    entry = read_metadata(path).get(NAME)
    if entry is None:
        return None
    start, raw = entry
    try:
        facts = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: metadata {NAME!r} is not JSON ({error})") from None
    if not isinstance(facts, dict):
        raise ValueError(f"{path}: metadata {NAME!r} is not a JSON object")
    recorded = facts.get("model_sha256")
    where = raw.find(_HASH_KEY)
    if not isinstance(recorded, str) or where < 0:
        raise ValueError(f"{path}: metadata {NAME!r} has no model_sha256")
    digits = start + where + len(_HASH_KEY)
    if _digest_without(path, digits) != recorded:
        raise ValueError(f"{path}: the file differs from the one its bundle writer made")
    return facts


_HASH_KEY = b'"model_sha256":"'
_UNSET = b"0" * 64


def _digest_without(path: str | Path, digits: int) -> str:
    """sha256 of the file with the 64 bytes at ``digits`` read as ``_UNSET``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        position = 0
        while chunk := handle.read(1 << 20):
            end = position + len(chunk)
            if position < digits + 64 and digits < end:  # the chunk holds some of the digits
                patched = bytearray(chunk)
                low, high = max(digits, position), min(digits + 64, end)
                patched[low - position : high - position] = _UNSET[low - digits : high - digits]
                chunk = bytes(patched)
            digest.update(chunk)
            position = end
    return digest.hexdigest()


def with_facts(flatbuffer: bytes, facts: dict[str, Any]) -> bytes:
    """``flatbuffer`` with ``facts`` as its ``keras_transformer`` metadata entry (replaced if
    there is one). Runs where bundles are made: it needs ai-edge-litert's schema module."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    facts = {**facts, "model_sha256": _UNSET.decode()}
    data = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = list(data)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = NAME, len(model.buffers) - 1
    kept = [item for item in (model.metadata or []) if _decoded(item.name) != NAME]
    model.metadata = kept + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    packed = bytearray(builder.Output())
    digits = packed.find(_HASH_KEY + _UNSET) + len(_HASH_KEY)
    packed[digits : digits + 64] = hashlib.sha256(packed).hexdigest().encode()
    return bytes(packed)


def _decoded(name: str | bytes | None) -> str | None:
    return name.decode("utf-8") if isinstance(name, bytes) else name
