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


WORDS = (
    "red green blue cat dog bird tree house river stone light dark open close file "
    "window door road sun moon"
).split()


def word_translation_pairs(
    num_pairs: int, min_words: int = 2, max_words: int = 8, seed: int = 0
) -> list[tuple[str, str]]:
    """Text pairs for a toy translation: the words reversed and upper-cased, with a full stop.

    ``"red cat open"`` -> ``"OPEN CAT RED."``: real text through a real tokenizer, small
    enough to learn in seconds.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for length in rng.integers(min_words, max_words + 1, num_pairs):
        words = [WORDS[index] for index in rng.integers(0, len(WORDS), length)]
        pairs.append((" ".join(words), " ".join(words[::-1]).upper() + "."))
    return pairs


def write_tsv(pairs: list[tuple[str, str]], path) -> None:
    """One ``source<TAB>target`` line per pair."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{source}\t{target}\n" for source, target in pairs)
