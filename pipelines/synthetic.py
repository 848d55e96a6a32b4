"""Synthetic seq2seq tasks built offline: data for tests, demos and benchmarks."""

from __future__ import annotations

import numpy as np

PAD, START, END = 0, 1, 2
FIRST_TOKEN = 3


def reversal_data(
    num_examples: int,
    max_length: int = 12,
    vocabulary_size: int = 20,
    min_length: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random token sequences and their reversals, padded with 0.

    Returns ``encoder_token_ids`` ``[N, max_length]``, ``decoder_token_ids``
    ``[N, max_length + 1]`` (START then the reversal) and ``targets`` (the reversal then END),
    as int32 arrays.
    """
    if not FIRST_TOKEN < vocabulary_size:
        raise ValueError(f"vocabulary_size must exceed {FIRST_TOKEN}, got {vocabulary_size}")
    rng = np.random.default_rng(seed)
    source = np.zeros((num_examples, max_length), np.int32)
    decoder = np.zeros((num_examples, max_length + 1), np.int32)
    targets = np.zeros((num_examples, max_length + 1), np.int32)
    for row, length in enumerate(rng.integers(min_length, max_length + 1, num_examples)):
        tokens = rng.integers(FIRST_TOKEN, vocabulary_size, length)
        source[row, :length] = tokens
        decoder[row, 0] = START
        decoder[row, 1 : length + 1] = tokens[::-1]
        targets[row, :length] = tokens[::-1]
        targets[row, length] = END
    return {"encoder_token_ids": source, "decoder_token_ids": decoder, "targets": targets}


def masked_token_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Share of non-padding target positions where the argmax of ``logits`` is right."""
    real = targets != PAD
    return float(((np.argmax(logits, -1) == targets) & real).sum() / real.sum())
