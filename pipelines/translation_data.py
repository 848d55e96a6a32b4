"""The tf.data input pipeline for translation: text pairs in, padded token batches out.

    pairs -> shard (per worker) -> tokenize (batched, in the pipeline) -> truncate, add
    start/end -> drop empties -> cache -> shuffle (seeded, per epoch) -> bucket by length with
    a token budget -> model inputs -> prefetch

Each batch is ``({"encoder_token_ids": [B, S_b], "decoder_token_ids": [B, T_b]}, labels [B, T_b])``
where ``S_b``/``T_b`` are the bucket's bounds; id 0 is padding everywhere, and the models and
the loss derive their masks from it. ``decoder_token_ids`` is the target shifted right behind
the start token; ``labels`` is the target followed by the end token.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_transformer_pipelines.batching import bucket_by_token_budget
from keras_transformer_pipelines.tokenizers import END_ID, START_ID

# Tokenizing a few hundred texts per call amortizes the op overhead of the tokenizer.
TOKENIZE_BATCH = 256


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
        dataset.batch(TOKENIZE_BATCH)
        .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .map(arrange, num_parallel_calls=tf.data.AUTOTUNE)
        .filter(not_empty)
    )


def _as_model_inputs(source, decoder_ids, labels):
    return {"encoder_token_ids": source, "decoder_token_ids": decoder_ids}, labels


def translation_dataset(
    pairs: Sequence[tuple[str, str]],
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    min_bucket_length: int = 8,
) -> tf.data.Dataset:
    """Batches for ``fit``/``evaluate`` from ``(source, target)`` text pairs.

    Args:
        pairs: the examples, in file order.
        tokenizer: a keras-nlp tokenizer (see ``tokenizers.py``).
        max_source_length, max_target_length: truncation lengths (the target's counts the
            start or end token).
        max_tokens: token budget per batch (length bucketing); the default mode.
        batch_size: a fixed batch padded to the maximum lengths instead (the peer baseline's
            way; set this or ``max_tokens``).
        shuffle: reshuffle every epoch, from ``seed``.
        cache: keep the tokenized examples in memory after the first epoch.
        input_context: under ``tf.distribute``, each input pipeline reads only its shard.
    """
    if (max_tokens is None) == (batch_size is None):
        raise ValueError("give exactly one of max_tokens (bucketing) or batch_size (fixed)")
    if not pairs:
        raise ValueError("no translation pairs to read")
    sources, targets = zip(*pairs, strict=True)
    dataset = tf.data.Dataset.from_tensor_slices((list(sources), list(targets)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    dataset = tokenize_pairs(dataset, tokenizer, max_source_length, max_target_length)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    if max_tokens is not None:
        longest = max(max_source_length, max_target_length)
        dataset = bucket_by_token_budget(
            dataset,
            lambda source, decoder_ids, labels: tf.maximum(
                tf.shape(source)[0], tf.shape(labels)[0]
            ),
            max_tokens=max_tokens,
            max_length=longest,
            min_length=min(min_bucket_length, longest),
        )
    else:
        dataset = dataset.padded_batch(
            batch_size,
            padded_shapes=([max_source_length], [max_target_length], [max_target_length]),
        )
    return dataset.map(_as_model_inputs).prefetch(tf.data.AUTOTUNE)
