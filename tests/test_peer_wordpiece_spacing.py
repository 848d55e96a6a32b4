"""The quality benchmark's keras-hub peer gets its spaces back: WordPiece output re-spaced by
benchmarks/helpers/wordpiece_spacing.py scores as the original text, not as space-joined pieces.
"""

import random
import sys
from pathlib import Path

import pytest

keras_hub = pytest.importorskip("keras_hub")
import tensorflow as tf  # noqa: E402

from keras_transformer_pipelines.metrics import bleu  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "helpers"))
from wordpiece_spacing import WordPieceSpacing  # noqa: E402

NOUNS = ["fichier", "image", "option", "erreur", "archive", "usager", "entrée", "outil"]
WORDS = ["ouvrir", "fermer", "le", "la", "un", "une", "dans", "pour", "avec", "sans", "nouveau"]


def _sentence(rng: random.Random) -> str:
    """French-like UI strings: elision, parentheses, hyphens, '%s', and ' :' spaced before."""
    noun, other = rng.choice(NOUNS), rng.choice(NOUNS)
    words = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
    forms = [
        f"Impossible d'ouvrir l'{noun} « %s » : {words}",
        f"{words.capitalize()} ({noun}-{rng.randint(2, 64)}) d'{other}, {words}.",
        f"L'{noun} n'existe pas : {words} ; {other}/{noun}",
        f"{noun.capitalize()} {words} [{other}] ?",
    ]
    return rng.choice(forms)


def _round_trip(texts: list[str], fit_on: list[str]) -> list[str]:
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(fit_on).batch(100),
        vocabulary_size=400,
        reserved_tokens=["[PAD]", "[UNK]", "[START]", "[END]"],
    )
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, lowercase=False)
    return [
        text if isinstance(text, str) else text.numpy().decode("utf-8")
        for text in tokenizer.detokenize(tokenizer(tf.constant(texts)))
    ]


def test_respaced_wordpiece_output_scores_as_the_original_text():
    rng = random.Random(0)
    train = [_sentence(rng) for _ in range(600)]
    held_out = [_sentence(rng) for _ in range(200)]
    space_joined = _round_trip(held_out, train)
    respaced = [WordPieceSpacing(train).join(text) for text in space_joined]

    # What the example's detokenization scores, and what the text itself scores.
    assert bleu(space_joined, held_out) < 60
    assert bleu(respaced, held_out) > 97
    exact = sum(a == b for a, b in zip(respaced, held_out, strict=True)) / len(held_out)
    assert exact > 0.95


def test_spacing_rules():
    spacing = WordPieceSpacing(["Ouvrir l'image (PNG).", "d'un fichier, puis", "Nom : valeur"])
    assert spacing.join("Ouvrir l ' image ( JPEG ) .") == "Ouvrir l'image (JPEG)."
    assert spacing.join("Taille : 5 , puis") == "Taille : 5, puis"  # learned, per mark
    assert spacing.join("a b c") == "a b c"  # words keep their single spaces
    assert spacing.join("x § y") == "x § y"  # never seen: spaced
    assert spacing.join("   ") == ""
