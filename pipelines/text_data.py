"""tf.data pipelines for the single-sequence tasks: classification, tagging, language modelling.

Each is the skeleton every pipeline shares (``translation_data.batch_examples``: shard, cache,
seeded shuffle, token-budget buckets or fixed batches, prefetch) around the task's own step:

    classification   text -> start + pieces, cut to max_length; its label's id
                     batches (token_ids [B, T], label_ids [B])
    tagging          words -> each word's pieces, in order; the word's tag id on its first
                     piece, IGNORED on the others and on padding
                     batches (token_ids [B, T], tag_ids [B, T])
    language model   line -> start + pieces + end; inputs and targets shifted by one
                     batches (token_ids [B, T], target_ids [B, T]), 0 padding in both

``**batching`` takes the keywords of :func:`~.translation_data.batch_examples`:
``max_tokens`` or ``batch_size``, ``shuffle``, ``seed``, ``cache``, ``input_context``.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines.tokenizers import END_ID, START_ID, UNK_ID, refreshed
from keras_transformer_pipelines.translation_data import batch_examples, tokenize_in_batches

# A label id the loss and the metrics skip: subword continuations, padding, unknown labels.
IGNORED = -1


def _with_start(ids: tf.Tensor) -> tf.Tensor:
    return tf.concat([tf.constant([START_ID], ids.dtype), ids], 0)


def classification_dataset(
    examples: Sequence[tuple[str, int]], tokenizer, max_length: int, **batching
) -> tf.data.Dataset:
    """Batches ``(token_ids [B, T], label_ids [B])`` from ``(text, label_id)`` examples.

    The start token leads every sequence, so "first" pooling has a token to read, and no
    text is empty. A label id of ``IGNORED`` is an example the loss skips.
    """
    if not examples:
        raise InputProblem("no examples to classify")
    tokenizer = refreshed(tokenizer)  # see tokenizers.refreshed
    texts, labels = zip(*examples, strict=True)

    def prepare(dataset):
        def tokenize(texts, labels):
            return tokenizer(texts), labels

        def arrange(ids, label):
            return _with_start(ids[: max_length - 1]), label

        return tokenize_in_batches(dataset, tokenize).map(arrange, tf.data.AUTOTUNE)

    return batch_examples(
        tf.data.Dataset.from_tensor_slices((list(texts), tf.constant(labels, tf.int32))),
        len(examples),
        prepare,
        lambda ids, label: tf.shape(ids)[0],
        max_length,
        ([max_length], []),
        **batching,
    )


def tagging_dataset(
    sentences: Sequence[tuple[Sequence[str], Sequence[int]]], tokenizer, max_length: int, **batching
) -> tf.data.Dataset:
    """Batches ``(token_ids [B, T], tag_ids [B, T])`` from ``(words, tag_ids)`` sentences.

    Each word is tokenized on its own and its pieces kept in order; the word's tag goes on
    its first piece and ``IGNORED`` on the rest, so the loss and the scores count every word
    once, as CoNLL scores them. A word that tokenizes to nothing becomes the unknown piece,
    so each word that fits in ``max_length`` has exactly one tagged piece (predictions map
    back to words by that).
    """
    if not sentences:
        raise InputProblem("no sentences to tag")
    lengths = [len(words) for words, _ in sentences]
    words = [word for sentence, _ in sentences for word in sentence]
    tags = [tag for _, sentence_tags in sentences for tag in sentence_tags]
    if len(tags) != len(words):
        raise InputProblem("every word needs one tag")
    tokenizer = refreshed(tokenizer)  # see tokenizers.refreshed

    def tokenize(words, tags):
        return tf.RaggedTensor.from_row_splits(tokenizer(words.flat_values), words.row_splits), tags

    def arrange(pieces, tags):
        counts = pieces.row_lengths()
        unknown = tf.fill([tf.shape(tags, tf.int64)[0], 1], tf.constant(UNK_ID, pieces.dtype))
        padded = tf.concat([pieces, tf.RaggedTensor.from_tensor(unknown)], axis=1)
        pieces = tf.ragged.boolean_mask(
            padded, tf.ragged.range(padded.row_lengths()) < tf.maximum(counts, 1)[:, None]
        )
        counts = pieces.row_lengths()
        first = tf.equal(tf.ragged.range(counts).flat_values, 0)
        # Tag ids + 1 while batching, so that padding's 0 reads as IGNORED once shifted back.
        labels = tf.where(first, tf.repeat(tags + 1, counts), 0)
        return pieces.flat_values[:max_length], labels[:max_length]

    words = tf.RaggedTensor.from_row_lengths(tf.constant(words, tf.string, [len(words)]), lengths)
    tags = tf.RaggedTensor.from_row_lengths(tf.constant(tags, tf.int32, [len(tags)]), lengths)
    return batch_examples(
        tf.data.Dataset.from_tensor_slices((words, tags)),
        len(sentences),
        lambda dataset: tokenize_in_batches(dataset, tokenize, ragged=True).map(arrange),
        lambda ids, labels: tf.shape(ids)[0],
        max_length,
        ([max_length], [max_length]),
        lambda ids, labels: (ids, labels + IGNORED),
        **batching,
    )


def language_model_dataset(
    lines: Sequence[str], tokenizer, max_length: int, **batching
) -> tf.data.Dataset:
    """Batches ``(token_ids [B, T], target_ids [B, T])`` from lines of text.

    A line is start + its pieces + end; the inputs are all of it but the last token, the
    targets all but the first, both cut to ``max_length`` (a line cut short has no end to
    predict). Lines without pieces are dropped.
    """
    if not lines:
        raise InputProblem("no lines of text to read")
    tokenizer = refreshed(tokenizer)  # see tokenizers.refreshed

    def arrange(ids):
        line = tf.concat([_with_start(ids[:max_length]), tf.constant([END_ID], ids.dtype)], 0)
        return line[:-1][:max_length], line[1:][:max_length]

    def prepare(dataset):
        return (
            tokenize_in_batches(dataset, lambda texts: tokenizer(texts))
            .map(arrange, tf.data.AUTOTUNE)
            .filter(lambda inputs, targets: tf.size(inputs) > 1)
        )

    return batch_examples(
        tf.data.Dataset.from_tensor_slices(list(lines)),
        len(lines),
        prepare,
        lambda inputs, targets: tf.shape(inputs)[0],
        max_length,
        ([max_length], [max_length]),
        **batching,
    )
