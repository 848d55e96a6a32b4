"""Token-budget bucketing: never over budget, every example exactly once per epoch."""

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer_pipelines.batching import (
    batch_sizes_for,
    bucket_boundaries,
    bucket_by_token_budget,
)


def test_boundaries_and_batch_sizes():
    bounds = bucket_boundaries(64, min_length=8)
    assert bounds[0] == 8 and bounds[-1] == 64 and bounds == sorted(set(bounds))
    assert all(b / a <= 1.3 for a, b in zip(bounds, bounds[1:]))  # geometric, step 1.25
    sizes = batch_sizes_for(bounds, max_tokens=1024)
    assert all(size * bound <= 1024 for size, bound in zip(sizes, bounds))
    assert sizes[0] == 128 and sizes[-1] == 16
    with pytest.raises(ValueError, match="cannot hold"):
        batch_sizes_for([100], max_tokens=50)


def _examples(n=600, max_length=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, n)
    # Each example carries its own index as its first token, to check coverage.
    sources = [
        np.concatenate([[i + 1], rng.integers(1, 99, length - 1)])
        for i, length in enumerate(lengths)
    ]
    targets = [rng.integers(1, 99, max(1, length // 2)) for length in lengths]
    return sources, targets


def test_no_batch_exceeds_budget_and_each_example_once():
    sources, targets = _examples()
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(sources, targets),
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64)),
    )
    budget = 512
    batched = bucket_by_token_budget(
        dataset,
        lambda source, target: tf.maximum(tf.shape(source)[0], tf.shape(target)[0]),
        max_tokens=budget,
        max_length=64,
    )
    seen, padded, real = [], 0, 0
    bounds = bucket_boundaries(64)
    for source, target in batched.as_numpy_iterator():
        for part in (source, target):
            assert part.shape[0] * part.shape[1] <= budget
            assert part.shape[1] in bounds  # padded to a bucket boundary
        seen += list(source[:, 0])
        padded += source.size
        real += int((source != 0).sum())
    assert sorted(seen) == list(range(1, len(sources) + 1))
    assert padded - real < 0.25 * padded  # little padding left
