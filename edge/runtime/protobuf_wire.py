"""The protobuf wire format, read by hand: enough of it for a SentencePiece ``ModelProto``.

Written by hand because the device runtime installs neither ``protobuf`` nor ``sentencepiece``
(numpy and a TFLite runtime only); the format is small and fixed. Every error is a one-line
``ValueError`` naming the field; callers add the file's name.
"""

from __future__ import annotations

from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

Fields = dict[int, list[tuple[int, int | bytes]]]


def varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def fields(data: bytes) -> Fields:
    """Every field of one message: ``{number: [(wire type, value), ...]}`` in file order."""
    found: Fields = {}
    position, end = 0, len(data)
    while position < end:
        key, position = varint(data, position)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if wire == VARINT:
            value, position = varint(data, position)
        else:
            if wire == LENGTH:
                size, position = varint(data, position)
            elif wire in (FIXED64, FIXED32):
                size = 8 if wire == FIXED64 else 4
            else:
                raise ValueError(f"field {number} has unsupported wire type {wire}")
            if position + size > end:
                raise ValueError(f"field {number} runs past the end of the data (truncated?)")
            value = data[position : position + size]
            position += size
        found.setdefault(number, []).append((wire, value))
    return found


def last(message_fields: Fields, number: int, wire: int, default: Any) -> Any:
    """The last value of a singular field (protobuf semantics), checking its wire type."""
    values = message_fields.get(number)
    if not values:
        return default
    found, value = values[-1]
    if found != wire:
        raise ValueError(f"field {number} has wire type {found}, expected {wire}")
    return value


def int32(value: int) -> int:
    """A varint read as a (possibly negative) int32."""
    return (value + 2**31) % 2**32 - 2**31


def text(value: bytes, what: str) -> str:
    """A string field's text."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None


def message(message_fields: Fields, number: int) -> Fields | None:
    """A singular sub-message (its occurrences merged), or None when absent."""
    values = message_fields.get(number)
    if not values:
        return None
    if any(wire != LENGTH for wire, _ in values):
        raise ValueError(f"field {number} is not a message")
    return fields(b"".join(value for _, value in values))  # type: ignore[misc]
