"""The functions a Keras model is exported through, one per signature, with static input
shapes: ``encode`` and the ``decode`` steps of a ``Seq2SeqTransformer``, ``prefill`` and
``decode`` of a ``TransformerLanguageModel``, ``classify`` or ``tag`` of a classifier
(``runtime/signatures.py`` is the contract they meet). ``convert.py`` exports and converts them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_transformer.errors import InputProblem
from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge.runtime.signatures import (
    CACHE_ENTRIES,
    POSITION_SHAPE,
    SPLIT_CACHE,
    bucket_name,
    layer_name,
)

Endpoints = dict[str, tuple[Callable, list[tf.TensorSpec]]]


# A decode step's cache position: shape [1], never rank 0 (runtime/signatures.py says why).
POSITION = tf.TensorSpec(POSITION_SHAPE, tf.int32)


def _position(index):
    """The position the layers take: a scalar from the exported ``[1]`` input; a
    ``decode_batch`` step's ``[rows]`` (one per row, format 6) as it is."""
    return tf.reshape(index, ()) if index.shape == POSITION.shape else index


class ConversionError(InputProblem):
    """A model that cannot be converted as asked; the message is one line and names the cause."""


def length_buckets(length: int) -> tuple[int, ...]:
    """The shorter lengths a sequence-length signature is also exported at (``encode_N``,
    ``prefill_N``): powers of two from 8 below ``length``. Most sentences of the gettext
    corpus are under 16 tokens; each bucket is one more subgraph sharing the weights."""
    return tuple(n for n in (8, 16, 32, 64, 128, 256) if n < length)


def decode_length_buckets(source: int, target: int) -> tuple[int, ...]:
    """The lengths a seq2seq decode step is also exported at (``decode_N``): the length
    buckets under both lengths, from 16 (or half the length, for a shorter model). A step
    reads N source and N cache positions; a translation moves on to the next bucket as it
    reaches N tokens, and one of 8 would move after 8 tokens, which most do."""
    shorter = min(source, target)
    return tuple(n for n in length_buckets(shorter) if n >= min(16, shorter // 2))


def seq2seq_endpoints(
    model: Seq2SeqTransformer,
    batch_size: int = 1,
    beam_size: int = 1,
    encode_lengths: Sequence[int] = (),
    batch_rows: int = 1,
    decode_lengths: Sequence[int] = (),
) -> Endpoints:
    """``encode`` and ``decode`` signatures with static shapes for ``batch_size`` rows.

    With ``beam_size > 1``, a ``decode_beam`` signature runs ``batch_size * beam_size`` rows,
    so the host's beam search advances every beam in one call (weights shared in the file).
    ``encode_lengths``: also ``encode_N`` for each shorter source length N (the runtime encodes
    a sentence with the shortest that holds it). ``batch_rows > 1``: a ``decode_batch``
    signature of that many rows, one sentence each at its own position (batch translation).
    ``decode_lengths``: each step signature also at ``{name}_N`` for sources of at most N
    tokens and the first N target positions (``runtime/signatures.py``).
    """
    model.ensure_built()
    source = tf.TensorSpec((batch_size, model.encoder_sequence_length), tf.int32)
    if not 1 <= batch_rows <= 64:
        raise ConversionError(f"batch rows must be in [1, 64], got {batch_rows}")
    for length in encode_lengths:
        if not 1 <= length < source.shape[1]:
            raise ConversionError(
                f"encode length bucket {length} must be in [1, {source.shape[1]})"
            )
    for length in decode_lengths:
        if not 1 <= length < min(source.shape[1], model.decoder_sequence_length):
            raise ConversionError(
                f"decode length bucket {length} must be in [1, "
                f"{min(source.shape[1], model.decoder_sequence_length)})"
            )
    layers = model.num_decoder_layers
    attention = model.decoder.layers[0].self_attention
    sizes = {
        "heads": attention.num_key_value_heads,
        "head_dim": attention.key_dim,
        "target": model.decoder_sequence_length,
        "source": source.shape[1],
    }
    cache_names = [layer_name(t, layer) for layer in range(layers) for t in SPLIT_CACHE]

    def encode(source_ids):
        output, mask = model.encode(source_ids)
        return {"cross_attention_cache": model.cross_attention_cache(output), "source_mask": mask}

    def decode(token, index, source_mask, **caches):
        per_layer = [
            tuple(caches[layer_name(template, layer)] for template in SPLIT_CACHE)
            for layer in range(layers)
        ]
        logits, entries = model.decode_step(token, per_layer, _position(index), source_mask)
        return {"logits": logits, CACHE_ENTRIES: entries}

    decode = _with_arguments(decode, ["token", "index", "source_mask", *cache_names])

    def decode_signature(
        rows: int, length: int | None = None, per_row: bool = False
    ) -> list[tf.TensorSpec]:
        dims = {**sizes, "rows": rows}
        if length is not None:  # a length bucket: N source and N target positions
            dims.update(source=length, target=length)
        caches = [
            tf.TensorSpec([dims[dim] for dim in SPLIT_CACHE[template][1]], tf.float32)
            for _ in range(layers)
            for template in SPLIT_CACHE
        ]
        return [
            tf.TensorSpec((rows, 1), tf.int32),
            tf.TensorSpec((rows,), tf.int32) if per_row else POSITION,
            tf.TensorSpec((rows, dims["source"]), tf.bool),
            *caches,
        ]

    endpoints = {"encode": (encode, [source])}
    for length in sorted(set(encode_lengths)):
        shorter = tf.TensorSpec((batch_size, length), tf.int32)
        endpoints[bucket_name("encode", length)] = (encode, [shorter])
    steps = {"decode": batch_size}
    if beam_size > 1:
        steps["decode_beam"] = batch_size * beam_size
    if batch_rows > 1:
        steps["decode_batch"] = batch_size * batch_rows
    for name, rows in steps.items():
        per_row = name == "decode_batch"  # each row its own sentence, at its own position
        endpoints[name] = (decode, decode_signature(rows, per_row=per_row))
        for length in sorted(set(decode_lengths)):
            signature = decode_signature(rows, length, per_row)
            endpoints[bucket_name(name, length)] = (decode, signature)
    return endpoints


def _with_arguments(function: Callable, names: list[str]) -> Callable:
    """``function(**named)`` callable with ``names`` as its positional arguments, in that
    order: an exported signature takes its input names from its function's arguments, and a
    decode step has a few per layer."""
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )

    def call(*args, **kwargs):
        return function(**signature.bind(*args, **kwargs).arguments)

    call.__signature__ = signature
    call.__name__ = function.__name__
    return call


def classifier_endpoints(
    model: SequenceClassifier | TokenClassifier, batch_size: int = 1
) -> Endpoints:
    """``classify`` (class logits ``[B, C]``) or ``tag`` (per-token logits ``[B, T, tags]``)."""
    model.ensure_built()
    name = "tag" if isinstance(model, TokenClassifier) else "classify"

    def run(token_ids):
        return {"logits": model(token_ids)}

    return {name: (run, [tf.TensorSpec((batch_size, model.sequence_length), tf.int32)])}


def language_model_endpoints(
    model: TransformerLanguageModel,
    prefill_length: int,
    batch_size: int = 1,
    prefill_lengths: Sequence[int] = (),
) -> Endpoints:
    """``prefill`` (a prompt of ``prefill_length`` tokens from position 0) and ``decode``;
    ``prefill_N`` for each shorter length N of ``prefill_lengths``."""
    model.ensure_built()
    cache = tf.TensorSpec(model.init_cache(batch_size).shape, tf.float32)

    def prefill(tokens, cache):
        logits, cache = model.call_with_cache(tokens, cache, 0)
        return {"logits": logits, "cache": cache}

    def decode(token, cache, index):
        logits, cache = model.call_with_cache(token, cache, _position(index))
        return {"logits": logits, "cache": cache}

    endpoints = {
        "prefill": (prefill, [tf.TensorSpec((batch_size, prefill_length), tf.int32), cache]),
        "decode": (
            decode,
            [tf.TensorSpec((batch_size, 1), tf.int32), cache, POSITION],
        ),
    }
    for length in sorted(set(prefill_lengths)):
        if not 1 <= length < prefill_length:
            raise ConversionError(
                f"prefill length bucket {length} must be in [1, {prefill_length})"
            )
        tokens = tf.TensorSpec((batch_size, length), tf.int32)
        endpoints[bucket_name("prefill", length)] = (prefill, [tokens, cache])
    return endpoints
