"""Length bucketing with a token budget per batch, on tf.data's own transformations.

Batches are formed from examples of similar length, and each bucket gets as many examples as
fit in ``max_tokens`` at the bucket's padded length, so short sentences travel in big batches
and long ones in small batches, with little padding. This wraps
``tf.data.Dataset.bucket_by_sequence_length``; what is ours is the choice of boundaries and
per-bucket batch sizes from a token budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_transformer.errors import InputProblem


def bucket_boundaries(max_length: int, min_length: int = 8, step: float = 1.25) -> list[int]:
    """Geometric bucket upper bounds from ``min_length`` to ``max_length`` (inclusive).

    A step of 1.25 bounds padding within a bucket to about 20% of its length.
    """
    if max_length < 1 or min_length < 1:
        raise InputProblem(
            f"lengths must be >= 1, got min_length={min_length}, max_length={max_length}"
        )
    bounds, length = [], float(min(min_length, max_length))
    while int(length) < max_length:
        bounds.append(int(length))
        length = max(length * step, int(length) + 1)
    return bounds + [max_length]


def batch_sizes_for(bounds: Sequence[int], max_tokens: int, multiple: int = 1) -> list[int]:
    """Examples per batch for each bucket: ``max_tokens // bound``, rounded down to ``multiple``."""
    sizes = []
    for bound in bounds:
        size = max_tokens // bound
        size = max(multiple, size - size % multiple)
        if size * bound > max_tokens:
            raise InputProblem(
                f"max_tokens={max_tokens} cannot hold {multiple} example(s) of length {bound}"
            )
        sizes.append(size)
    return sizes


def bucket_by_token_budget(
    dataset: tf.data.Dataset,
    length_fn: Callable,
    max_tokens: int,
    max_length: int,
    min_length: int = 8,
    step: float = 1.25,
    pad_to_bucket_boundary: bool = True,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batch ``dataset`` so that no batch holds more than ``max_tokens`` padded tokens.

    Args:
        dataset: unbatched examples (any structure of 1-D tensors).
        length_fn: example -> its length (int32 scalar) in tokens, the longest of its parts
            that share the budget.
        max_tokens: token budget per batch: for each part of an example (source, target),
            batch size x padded length never exceeds it.
        max_length: the longest example; longer examples must be truncated before this.
        pad_to_bucket_boundary: pad each batch to its bucket's upper bound (static-ish shapes,
            fewer retraces); otherwise to the longest example in the batch.
        drop_remainder: drop each bucket's last partial batch.
    """
    bounds = bucket_boundaries(max_length, min_length, step)
    sizes = batch_sizes_for(bounds, max_tokens)
    # tf.data's boundaries are exclusive upper bounds: bucket i holds lengths < bounds[i].
    batched = dataset.bucket_by_sequence_length(
        element_length_func=length_fn,
        bucket_boundaries=[bound + 1 for bound in bounds[:-1]],
        bucket_batch_sizes=sizes,
        pad_to_bucket_boundary=False,
        drop_remainder=drop_remainder,
    )
    return batched.map(_pad_to(bounds)) if pad_to_bucket_boundary else batched


def _pad_to(bounds: Sequence[int]):
    """Pad every 1-D-per-example tensor of a batch up to the smallest bound that holds it."""
    bounds_tensor = tf.constant(list(bounds), tf.int32)

    def pad(*batch):
        structure = batch if len(batch) > 1 else batch[0]

        def pad_one(tensor):
            if tensor.shape.rank != 2:
                return tensor
            length = tf.shape(tensor)[1]
            target = bounds_tensor[tf.argmax(tf.cast(bounds_tensor >= length, tf.int32))]
            return tf.pad(tensor, [[0, 0], [0, target - length]])

        return tf.nest.map_structure(pad_one, structure)

    return pad
