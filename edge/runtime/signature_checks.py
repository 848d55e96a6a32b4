"""The check of a bundle's signatures against the contract of ``signatures.py``: every name,
dtype and shape, each named size bound once across the model (``target`` the same in every
tensor that has it), length buckets against their parent signature, and what each format
version allows. One error type, :class:`SignatureMismatch`, with a one-line message naming the
tensor and the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keras_transformer_edge.runtime.signatures import (
    BUCKETED,
    BUCKETED_FIRST,
    DECODE_BUCKETS_VERSION,
    LAYER,
    MULTI_ROW,
    OPTIONAL,
    POSITION_SHAPES,
    Dimension,
    TensorSpec,
    bucket_of,
    expected_signatures,
    layer_name,
)


class SignatureMismatch(ValueError):
    """A model whose signatures break the contract; one line naming the tensor and the rule."""


def check_signatures(
    kind: str,
    signatures: Mapping[str, Any],
    sizes: Mapping[str, int],
    format_version: int = 6,
) -> dict[str, int]:
    """Check ``signatures`` (as ``LiteModel.signatures`` reports them) against the contract.

    Args:
        kind: the bundle's kind (a key of :data:`SIGNATURES`).
        signatures: ``{name: {"inputs": {name: {"shape", "dtype"}}, "outputs": {...}}}``.
        sizes: sizes the manifest fixes (``source``, ``target``, ``vocabulary``, ...).
        format_version: decides the shape of ``index`` (:data:`POSITION_SHAPES`).

    Returns every named size, as bound. Raises :class:`SignatureMismatch`.
    """
    expected = expected_signatures(kind, format_version)
    missing = sorted(set(expected) - OPTIONAL - set(signatures))
    if missing:
        raise SignatureMismatch(f"a {kind} model needs the signatures {missing}")
    lengths = {name: found for name in signatures if (found := bucket_of(kind, name))}
    unknown = sorted(set(signatures) - set(expected) - set(lengths))
    if unknown:
        raise SignatureMismatch(f"signatures {unknown} are not part of a {kind} bundle")
    newer = sorted(n for n in signatures if n == "decode_batch" or n in lengths)
    if newer and format_version < 3:
        raise SignatureMismatch(f"signatures {newer} need format version 3, not {format_version}")
    stepped = sorted(n for n, (parent, _) in lengths.items() if parent != BUCKETED_FIRST.get(kind))
    if stepped and format_version < DECODE_BUCKETS_VERSION:
        raise SignatureMismatch(
            f"signatures {stepped} need format version {DECODE_BUCKETS_VERSION}, "
            f"not {format_version}"
        )
    bound = {name: int(value) for name, value in sizes.items()}
    # The rows of a several-row signature, shared with its length buckets.
    rows = {name: {} if name in MULTI_ROW else {"rows": 1} for name in expected}
    for name in expected:
        if name in signatures:
            _check_signature(
                name, expected[name], signatures[name], bound, rows[name], format_version
            )
    for name, (parent, length) in lengths.items():
        if parent not in signatures:
            raise SignatureMismatch(
                f"signature {name!r} is a length bucket of {parent!r}, which the bundle lacks"
            )
        shortened = BUCKETED[kind][parent]
        for size in shortened:
            if length >= bound[size]:
                raise SignatureMismatch(
                    f"signature {name!r}: a bucket must be shorter than {size} ({bound[size]})"
                )
        shorter = {
            side: {
                tensor: (dtype, tuple(length if dim in shortened else dim for dim in dims))
                for tensor, (dtype, dims) in tensors.items()
            }
            for side, tensors in expected[parent].items()
        }
        _check_signature(name, shorter, signatures[name], bound, rows[parent], format_version)
    return bound


def _check_signature(
    name: str,
    expected: dict[str, dict[str, TensorSpec]],
    found: Mapping[str, Any],
    bound: dict[str, int],
    local: dict[str, int],
    format_version: int,
) -> None:
    if any(LAYER in tensor for tensors in expected.values() for tensor in tensors):
        expected = _per_layer(name, expected, bound)
    for side in ("inputs", "outputs"):
        tensors = found.get(side) if isinstance(found, Mapping) else None
        if not isinstance(tensors, Mapping) or set(tensors) != set(expected[side]):
            names = sorted(tensors) if isinstance(tensors, Mapping) else tensors
            raise SignatureMismatch(
                f"signature {name!r}: {side} {names}, expected {sorted(expected[side])}"
            )
        for tensor, (dtype, dims) in expected[side].items():
            where = f"signature {name!r} {side[:-1]} {tensor!r}"
            spec = tensors[tensor]
            shape = spec.get("shape") if isinstance(spec, Mapping) else None
            if not isinstance(shape, list) or not all(_is_int(size) for size in shape):
                raise SignatureMismatch(f"{where}: no valid shape")
            if spec.get("dtype") != dtype:
                raise SignatureMismatch(f"{where}: dtype {spec.get('dtype')!r}, expected {dtype}")
            if dims == ("position",):
                wanted = list(POSITION_SHAPES[format_version])
                if shape != wanted:
                    raise SignatureMismatch(
                        f"{where}: shape {shape}, expected {wanted} in format version "
                        f"{format_version}"
                    )
                continue
            _bind_shape(where, dims, shape, bound, local)


def _per_layer(
    name: str, expected: dict[str, dict[str, TensorSpec]], bound: dict[str, int]
) -> dict[str, dict[str, TensorSpec]]:
    """``expected`` with each per-layer template repeated for every layer."""
    layers = bound.get("layers")
    if layers is None:  # bound by encode's cross_attention_cache, checked first
        raise SignatureMismatch(f"signature {name!r}: the number of layers is not known")
    return {
        side: {
            layer_name(tensor, layer): spec
            for tensor, spec in tensors.items()
            for layer in (range(layers) if LAYER in tensor else [0])
        }
        for side, tensors in expected.items()
    }


def _bind_shape(
    where: str,
    dims: tuple[Dimension, ...],
    shape: list[int],
    bound: dict[str, int],
    local: dict[str, int],
) -> None:
    if len(shape) != len(dims):
        raise SignatureMismatch(f"{where}: rank {len(shape)} {shape}, expected {list(dims)}")
    for dim, size in zip(dims, shape, strict=True):
        if size < 1:
            raise SignatureMismatch(f"{where}: shape {shape} is not static and positive")
        if isinstance(dim, int):
            if size != dim:
                raise SignatureMismatch(f"{where}: shape {shape}, expected {list(dims)}")
            continue
        table = local if dim == "rows" else bound
        if dim == "rows" and "rows" not in local:
            if size < 2:  # decode_beam/decode_batch: one row is the decode signature
                raise SignatureMismatch(
                    f"{where}: {size} rows, a signature of several rows needs 2 or more"
                )
        if table.setdefault(dim, size) != size:
            raise SignatureMismatch(
                f"{where}: {dim} is {size} here but {table[dim]} elsewhere in the bundle"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
