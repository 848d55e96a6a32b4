"""The signatures of a bundle's model, per kind: names, inputs, outputs, dtypes and shapes.

This table is the contract between the converter (``edge/convert.py`` exports exactly these),
the runtime (which checks a bundle against it before anything runs) and an app written against
``docs/bundle-format.md``. A shape is a list of dimensions; a name stands for a size that must
be the same wherever it appears in the model (``target`` is also ``max_lengths.target``,
``vocabulary`` the manifest's ``vocabulary_size``), a number is that size::

    seq2seq          encode       source_ids int32 [1, source]
                                  -> cross_attention_cache float32 [1, L, 2, H, source, D],
                                     source_mask bool [1, source]
                     decode       token int32 [1, 1], index int32 [1], source_mask,
                                  per layer l < L: self_keys_l [1, H, target, D],
                                  self_values_l [1, H, D, target], cross_keys_l
                                  [1, H, source, D], cross_values_l [1, H, D, source]
                                  -> logits float32 [1, 1, vocabulary],
                                     cache_entries float32 [1, L, 2, H, D]
                     decode_beam  (optional) decode for ``beam`` rows at once (beam >= 2)
                     decode_batch (optional) decode for ``batch`` rows at once (batch >= 2),
                                  each row its own sentence: batch translation. From
                                  format 6 its ``index`` is int32 [batch], each row's own
                                  position, so a finished row takes the next sentence at
                                  position 0 while the others go on (continuous batching)
                     encode_N     (optional, N < source) encode of a source of at most N
                                  tokens: ``source`` is N in all three tensors; the runtime
                                  pads the outputs back to ``source`` (masked out)
                     decode_N, decode_beam_N, decode_batch_N (optional, N < source and
                                  N < target; format 5) the step for sources of at most N
                                  tokens and the first N target positions: ``source`` and
                                  ``target`` are N in every tensor. A step's attention reads
                                  N source and N cache positions, not the full lengths; the
                                  runtime moves a translation to the next longer step (its
                                  caches zero-padded, masked out) when it reaches N tokens
    language_model   prefill      tokens int32 [1, prefill], cache [1, L, 2, H, context, D]
                                  -> logits float32 [1, prefill, vocabulary], cache
                     decode       token int32 [1, 1], cache, index int32 [1] -> logits, cache
                     prefill_N    (optional, N < prefill) prefill of at most N tokens
    classifier       classify     token_ids int32 [1, tokens] -> logits float32 [1, classes]
    tagger           tag          token_ids int32 [1, tokens] -> logits [1, tokens, classes]

``index`` is the cache position a decode step writes, one int32 in a tensor of shape ``[1]``
(``decode_batch`` from format 6: one per row, ``[batch]``; the host writes row ``r``'s entries
at ``index[r]``).

A seq2seq ``decode`` (format version 4) only reads its caches, one tensor per layer and side,
so that no cache is copied through the graph: the host keeps them, writes the step's
``cache_entries`` (layer ``l``'s new key ``[:, l, 0]`` and value ``[:, l, 1]``) at ``index``
of ``self_keys_l`` (``[:, :, index, :]``) and ``self_values_l`` (``[:, :, :, index]``), and
fills ``cross_keys_l`` and ``cross_values_l`` once per source from ``encode``'s
``cross_attention_cache`` (``[:, l, 0]``, and ``[:, l, 1]`` with its last two axes swapped).
Values are stored value-major (``[H, D, length]``): TFLite's BATCH_MATMUL then reads them in
place. Format versions 1 to 3 carried one packed ``cache`` in and out of every step
(:data:`PACKED_DECODE`); the language model's ``decode`` still does.

Format version 3 added the optional ``decode_batch``, ``encode_N`` and ``prefill_N``; version
5 the decode length buckets (``decode_N``, ``decode_beam_N``, ``decode_batch_N``); version 6
a position per row in ``decode_batch`` (and its buckets).
Format version 1 exported ``index`` with shape ``[]`` (rank 0): ai-edge-litert's aarch64 build
(2.1.6 to 2.3.0, at least) crashes when its signature runner resizes a rank-0 input, so version
2 has no rank-0 input anywhere. The runtime reads every version (it never resizes an input).
"""

from __future__ import annotations

import numpy as np

Dimension = int | str
TensorSpec = tuple[str, tuple[Dimension, ...]]  # (dtype, shape)

CACHE = ("rows", "layers", 2, "heads", "{length}", "head_dim")
CROSS_CACHE = ("rows", "layers", 2, "heads", "source", "head_dim")


def _cache(length: str) -> tuple[Dimension, ...]:
    return tuple(length if dim == "{length}" else dim for dim in CACHE)


def _decode(with_source: bool, length: str) -> dict[str, dict[str, TensorSpec]]:
    inputs: dict[str, TensorSpec] = {
        "token": ("int32", ("rows", 1)),
        "cache": ("float32", _cache(length)),
        "index": ("int32", ("position",)),
    }
    if with_source:
        inputs["cross_attention_cache"] = ("float32", CROSS_CACHE)
        inputs["source_mask"] = ("bool", ("rows", "source"))
    outputs = {"logits": ("float32", ("rows", 1, "vocabulary")), "cache": inputs["cache"]}
    return {"inputs": inputs, "outputs": outputs}


# A per-layer tensor's name: the template with "{layer}" replaced by 0 .. layers - 1.
LAYER = "{layer}"
SELF_KEYS, SELF_VALUES = "self_keys_{layer}", "self_values_{layer}"
CROSS_KEYS, CROSS_VALUES = "cross_keys_{layer}", "cross_values_{layer}"
# In this order: a layer's caches as TransformerDecoder.decode_step takes them.
SPLIT_CACHE = {
    SELF_KEYS: ("float32", ("rows", "heads", "target", "head_dim")),
    SELF_VALUES: ("float32", ("rows", "heads", "head_dim", "target")),
    CROSS_KEYS: ("float32", ("rows", "heads", "source", "head_dim")),
    CROSS_VALUES: ("float32", ("rows", "heads", "head_dim", "source")),
}
CACHE_ENTRIES = "cache_entries"


def _split_decode(index: tuple[Dimension, ...] = ("position",)) -> dict[str, dict[str, TensorSpec]]:
    inputs: dict[str, TensorSpec] = {
        "token": ("int32", ("rows", 1)),
        "index": ("int32", index),
        "source_mask": ("bool", ("rows", "source")),
        **SPLIT_CACHE,
    }
    outputs = {
        "logits": ("float32", ("rows", 1, "vocabulary")),
        CACHE_ENTRIES: ("float32", ("rows", "layers", 2, "heads", "head_dim")),
    }
    return {"inputs": inputs, "outputs": outputs}


def layer_name(template: str, layer: int) -> str:
    """A per-layer tensor's name: ``self_keys_{layer}`` of layer 2 is ``self_keys_2``."""
    return template.replace(LAYER, str(layer))


# A seq2seq decode step in format versions 1 to 3: one packed cache in and out.
PACKED_DECODE = _decode(True, "target")

# kind -> signature -> {"inputs", "outputs"}; "rows" is 1 except in decode_beam ("beam").
SIGNATURES: dict[str, dict[str, dict[str, dict[str, TensorSpec]]]] = {
    "seq2seq": {
        "encode": {
            "inputs": {"source_ids": ("int32", ("rows", "source"))},
            "outputs": {
                "cross_attention_cache": ("float32", CROSS_CACHE),
                "source_mask": ("bool", ("rows", "source")),
            },
        },
        "decode": _split_decode(),
        "decode_beam": _split_decode(),
        "decode_batch": _split_decode(index=("rows",)),  # format 6: a position per row
    },
    "language_model": {
        "prefill": {
            "inputs": {
                "tokens": ("int32", ("rows", "prefill")),
                "cache": ("float32", _cache("context")),
            },
            "outputs": {
                "logits": ("float32", ("rows", "prefill", "vocabulary")),
                "cache": ("float32", _cache("context")),
            },
        },
        "decode": _decode(False, "context"),
    },
    "classifier": {
        "classify": {
            "inputs": {"token_ids": ("int32", ("rows", "tokens"))},
            "outputs": {"logits": ("float32", ("rows", "classes"))},
        }
    },
    "tagger": {
        "tag": {
            "inputs": {"token_ids": ("int32", ("rows", "tokens"))},
            "outputs": {"logits": ("float32", ("rows", "tokens", "classes"))},
        }
    },
}
OPTIONAL = {"decode_beam", "decode_batch"}
# Signatures of several rows: the name of their row count.
MULTI_ROW = {"decode_beam": "beam", "decode_batch": "batch"}
# The signature each kind has had length buckets of since format version 3.
BUCKETED_FIRST = {"seq2seq": "encode", "language_model": "prefill"}
# kind -> signature exported at shorter lengths as ``{signature}_{N}`` -> the names of the
# sizes that are N in a bucket.
BUCKETED = {
    "seq2seq": {
        "encode": ("source",),
        **{step: ("source", "target") for step in ("decode", "decode_beam", "decode_batch")},
    },
    "language_model": {"prefill": ("prefill",)},
}
# The shape of ``index`` in each format version the runtime reads.
POSITION_SHAPES = {1: (), 2: (1,), 3: (1,), 4: (1,), 5: (1,), 6: (1,)}
POSITION_SHAPE = POSITION_SHAPES[6]  # what the converter exports
SPLIT_CACHE_VERSION = 4  # the first format version whose seq2seq decode reads split caches
DECODE_BUCKETS_VERSION = 5  # the first format version with decode length buckets
ROW_POSITIONS_VERSION = 6  # the first format version whose decode_batch has a position per row


def bucket_name(signature: str, length: int) -> str:
    """The name of ``signature`` exported at a shorter ``length``: ``encode_16``."""
    return f"{signature}_{length}"


def bucket_length(name: str, signature: str) -> int | None:
    """``N`` when ``name`` is ``{signature}_{N}`` (a length bucket of ``signature``)."""
    head, _, tail = name.rpartition("_")
    if head != signature or not tail.isdigit() or tail != str(int(tail)) or int(tail) < 1:
        return None
    return int(tail)


def of_signature(name: str, signature: str) -> bool:
    """Whether ``name`` is ``signature`` or one of its length buckets (``decode_16``)."""
    return name == signature or bucket_length(name, signature) is not None


def buckets(names, signature: str) -> list[int]:
    """The bucket lengths of ``signature`` among signature ``names``, shortest first."""
    return sorted(n for name in names if (n := bucket_length(name, signature)) is not None)


def bucket_of(kind: str, name: str) -> tuple[str, int] | None:
    """``(signature, N)`` when ``name`` is a length bucket of one of ``kind``'s signatures."""
    for signature in BUCKETED.get(kind, {}):
        length = bucket_length(name, signature)
        if length is not None:
            return signature, length
    return None


def expected_signatures(kind: str, format_version: int) -> dict[str, dict]:
    """The contract of ``kind`` in ``format_version`` (:data:`SIGNATURES` from version 6)."""
    expected = SIGNATURES[kind]
    if kind == "seq2seq" and format_version < SPLIT_CACHE_VERSION:
        expected = {
            name: PACKED_DECODE if name in MULTI_ROW or name == "decode" else spec
            for name, spec in expected.items()
        }
    elif kind == "seq2seq" and format_version < ROW_POSITIONS_VERSION:
        expected = {**expected, "decode_batch": _split_decode()}
    return expected


def row_positions(index_shape: tuple[int, ...], rows: int) -> bool:
    """Whether a step whose ``index`` has shape ``index_shape`` takes a position per row
    (``decode_batch`` from format 6) for its ``rows`` rows."""
    return rows > 1 and tuple(index_shape) == (rows,)


def position(index: int, shape: tuple[int, ...] = POSITION_SHAPE) -> np.ndarray:
    """The ``index`` input of a decode step: the cache position, int32, in ``shape``."""
    return np.full(shape, index, np.int32)


def signature_table() -> str:
    """:data:`SIGNATURES` as a Markdown table (docs/bundle-format.md holds it verbatim)."""
    rows = ["| kind | signature | side | tensor | dtype | shape |", "|---|---|---|---|---|---|"]
    for kind, signatures in SIGNATURES.items():
        for name, sides in signatures.items():
            for side, tensors in sides.items():
                for tensor, (dtype, dims) in tensors.items():
                    if dims == ("position",):
                        dims = POSITION_SHAPE
                    if name in MULTI_ROW:
                        dims = tuple(MULTI_ROW[name] if dim == "rows" else dim for dim in dims)
                    shape = ", ".join(str(1 if dim == "rows" else dim) for dim in dims)
                    rows.append(
                        f"| {kind} | `{name}` | {side[:-1]} | `{tensor}` | {dtype} | [{shape}] |"
                    )
    return "\n".join(rows) + "\n"
