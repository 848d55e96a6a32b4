"""Synthetic tasks built offline (seq2seq, classification, tagging, language modelling): data
for tests, demos and benchmarks."""

from __future__ import annotations

import json

import numpy as np

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines.tokenizers import END_ID as END
from keras_transformer_pipelines.tokenizers import PAD_ID as PAD
from keras_transformer_pipelines.tokenizers import START_ID as START
from keras_transformer_pipelines.tokenizers import UNK_ID

FIRST_TOKEN = UNK_ID + 1  # the special ids are the tokenizers' own; words come after them


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
        raise InputProblem(f"vocabulary_size must exceed {FIRST_TOKEN}, got {vocabulary_size}")
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


# Toy data for the single-sequence tasks, in the same small vocabulary.
COLOURS, ANIMALS, SHADES = ("red", "green", "blue"), ("cat", "dog", "bird"), ("light", "dark")
TOPICS = {"colour": COLOURS, "animal": ANIMALS, "nature": ("tree", "river", "stone", "sun", "moon")}
NEUTRAL = ("house", "open", "close", "file", "window", "door", "road")


def topic_sentences(num_sentences: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(text, topic)``: one or two words of a topic among neutral words.

    ``"door red open"`` -> ``"colour"``; the topics are ``colour``, ``animal`` and ``nature``.
    """
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    examples = []
    for _ in range(num_sentences):
        topic = names[rng.integers(len(names))]
        words = list(rng.choice(TOPICS[topic], rng.integers(1, 3)))
        words += list(rng.choice(NEUTRAL, rng.integers(1, 5)))
        examples.append((" ".join(rng.permutation(words)), topic))
    return examples


def entity_sentences(num_sentences: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``(words, BIO tags)`` for a toy NER: colours, with an optional shade, and animals.

    ``"dark red"`` is ``B-COLOR I-COLOR`` but a shade alone is ``O`` (``"dark door"``), so a
    tagger must read the next word; animals are ``B-ANIMAL``, other words ``O``.
    """
    rng = np.random.default_rng(seed)
    vocabulary = {"other": NEUTRAL, "animal": ANIMALS, "colour": COLOURS, "shade": SHADES}
    sentences = []
    for _ in range(num_sentences):
        kinds = rng.choice(list(vocabulary), rng.integers(2, 9), p=[0.35, 0.2, 0.25, 0.2])
        words = [str(rng.choice(vocabulary[kind])) for kind in kinds]
        sentences.append((words, entity_tags(words)))
    return sentences


def entity_tags(words: list[str]) -> list[str]:
    """The toy NER's tags for ``words`` (see :func:`entity_sentences`)."""
    tags = []
    for index, word in enumerate(words):
        after_shade = index > 0 and words[index - 1] in SHADES
        before_colour = index + 1 < len(words) and words[index + 1] in COLOURS
        if word in ANIMALS:
            tags.append("B-ANIMAL")
        elif word in COLOURS:
            tags.append("I-COLOR" if after_shade else "B-COLOR")
        else:
            tags.append("B-COLOR" if word in SHADES and before_colour else "O")
    return tags


def word_cycles(num_lines: int, min_words: int = 3, max_words: int = 8, seed: int = 0) -> list[str]:
    """Lines of a toy language: ``WORDS`` in their cyclic order from a random start.

    ``"cat dog bird tree"``: every word after the first follows from the one before, so a
    language model can do much better than word frequencies.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for length in rng.integers(min_words, max_words + 1, num_lines):
        start = rng.integers(len(WORDS))
        lines.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(length)))
    return lines


def write_jsonl(
    examples: list[tuple[str, str]], path, text_field: str = "text", label_field: str = "label"
) -> None:
    """One JSON object a line: ``{"text": ..., "label": ...}``."""
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in examples:
            handle.write(json.dumps({text_field: text, label_field: label}) + "\n")


def write_conll(sentences: list[tuple[list[str], list[str]]], path) -> None:
    """``word tag`` lines, a blank line after each sentence."""
    with open(path, "w", encoding="utf-8") as handle:
        for words, tags in sentences:
            handle.writelines(f"{word} {tag}\n" for word, tag in zip(words, tags, strict=True))
            handle.write("\n")
