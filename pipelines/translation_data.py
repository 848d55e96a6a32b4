"""The tf.data input pipeline for translation: text pairs in, padded token batches out.

    pairs -> shard (per worker) -> tokenize (batched, in the pipeline) -> truncate, add
    start/end -> drop empties -> cache -> shuffle (seeded, per epoch) -> bucket by length with
    a token budget -> model inputs -> prefetch

Each batch is ``({"encoder_token_ids": [B, S_b], "decoder_token_ids": [B, T_b]}, labels [B, T_b])``
where ``S_b``/``T_b`` are the bucket's bounds; id 0 is padding everywhere, and the models and
the loss derive their masks from it. ``decoder_token_ids`` is the target shifted right behind
the start token; ``labels`` is the target followed by the end token.

:func:`batch_examples` is the part every task's pipeline shares (``text_data.py`` builds the
classification, tagging and language-model pipelines on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines.batching import bucket_by_token_budget
from keras_transformer_pipelines.tokenizers import END_ID, START_ID, refreshed

# Tokenizing a few hundred texts per call amortizes the op overhead of the tokenizer.
TOKENIZE_BATCH = 256


def tokenize_in_batches(dataset: tf.data.Dataset, tokenize: Callable, ragged: bool = False):
    """``tokenize`` (a batch of examples -> a batch) run ``TOKENIZE_BATCH`` examples at a time.

    ``ragged`` batches examples of different lengths (sentences as lists of words).
    """
    batched = dataset.ragged_batch(TOKENIZE_BATCH) if ragged else dataset.batch(TOKENIZE_BATCH)
    return batched.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def tokenize_pairs(
    dataset: tf.data.Dataset,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
) -> tf.data.Dataset:
    """``(source, target)`` strings -> ``(source_ids, decoder_ids, labels)``, empties dropped.

    Sources are truncated to ``max_source_length`` tokens; targets to ``max_target_length - 1``
    so that start + target and target + end both fit in ``max_target_length``.
    """

    tokenizer = refreshed(tokenizer)

    def tokenize(sources, targets):
        return tokenizer(sources), tokenizer(targets)

    def arrange(source, target):
        source = source[:max_source_length]
        target = target[: max_target_length - 1]
        start, end = tf.constant([START_ID], target.dtype), tf.constant([END_ID], target.dtype)
        return source, tf.concat([start, target], 0), tf.concat([target, end], 0)

    def not_empty(source, decoder_ids, labels):
        return tf.logical_and(tf.size(source) > 0, tf.size(labels) > 1)

    return (
        tokenize_in_batches(dataset, tokenize)
        .map(arrange, num_parallel_calls=tf.data.AUTOTUNE)
        .filter(not_empty)
    )


def _as_model_inputs(source, decoder_ids, labels):
    return {"encoder_token_ids": source, "decoder_token_ids": decoder_ids}, labels


def batch_examples(
    dataset: tf.data.Dataset,
    num_examples: int,
    prepare: Callable[[tf.data.Dataset], tf.data.Dataset],
    length_fn: Callable,
    max_length: int,
    padded_shapes,
    to_model_inputs: Callable | None = None,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    min_bucket_length: int = 8,
) -> tf.data.Dataset:
    """The steps every task's pipeline shares, around the task's own ``prepare`` step::

        examples -> shard -> prepare (tokenize, arrange, filter) -> cache -> shuffle ->
        bucket by a token budget, or fixed padded batches -> to_model_inputs -> prefetch

    Args:
        dataset: the examples as slices, in file order; ``num_examples`` of them.
        length_fn: a prepared example -> its length in tokens (the longest of its parts).
        max_length: the longest a prepared example can be.
        padded_shapes: of a prepared example in a fixed batch (``batch_size``).
        to_model_inputs: a batch -> what ``fit`` takes (default: the batch as it is).
        max_tokens: token budget per batch (length bucketing); the default mode.
        batch_size: a fixed batch padded to ``padded_shapes`` instead (the peer baseline's
            way; set this or ``max_tokens``).
        shuffle: reshuffle every epoch, from ``seed``.
        cache: keep the prepared examples in memory after the first epoch.
        input_context: under ``tf.distribute``, each input pipeline reads only its shard.
        min_bucket_length: the smallest bucket's bound.
    """
    if (max_tokens is None) == (batch_size is None):
        raise InputProblem("give exactly one of max_tokens (bucketing) or batch_size (fixed)")
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    dataset = prepare(dataset)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    if max_tokens is not None:
        dataset = bucket_by_token_budget(
            dataset,
            length_fn,
            max_tokens=max_tokens,
            max_length=max_length,
            min_length=min(min_bucket_length, max_length),
        )
    else:
        dataset = dataset.padded_batch(batch_size, padded_shapes=padded_shapes)
    if to_model_inputs is not None:
        dataset = dataset.map(to_model_inputs)
    return dataset.prefetch(tf.data.AUTOTUNE)


def translation_dataset(
    pairs: Sequence[tuple[str, str]],
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    **batching,
) -> tf.data.Dataset:
    """Batches for ``fit``/``evaluate`` from ``(source, target)`` text pairs.

    Args:
        pairs: the examples, in file order.
        tokenizer: a keras-nlp tokenizer (see ``tokenizers.py``).
        max_source_length, max_target_length: truncation lengths (the target's counts the
            start or end token).
        batching: ``max_tokens`` or ``batch_size``, ``shuffle``, ``seed``, ``cache``,
            ``input_context``, ``min_bucket_length``: see :func:`batch_examples`.
    """
    if not pairs:
        raise InputProblem("no translation pairs to read")
    sources, targets = zip(*pairs, strict=True)
    return batch_examples(
        tf.data.Dataset.from_tensor_slices((list(sources), list(targets))),
        len(pairs),
        lambda dataset: tokenize_pairs(dataset, tokenizer, max_source_length, max_target_length),
        lambda source, decoder_ids, labels: tf.maximum(tf.shape(source)[0], tf.shape(labels)[0]),
        max(max_source_length, max_target_length),
        ([max_source_length], [max_target_length], [max_target_length]),
        _as_model_inputs,
        **batching,
    )
