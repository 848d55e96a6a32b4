"""Corpus metrics against hand-computed values."""

import math

import keras
import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from keras import ops

from keras_transformer import ArgumentError
from keras_transformer_pipelines.metrics import (
    accuracy,
    bleu,
    chrf,
    entity_f1,
    entity_spans,
    macro_f1,
    perplexity,
    perplexity_of,
)

# --- BLEU and chrF ------------------------------------------------------------------------------


def test_identical_text_scores_100():
    text = ["the cat sat on the mat .", "a dog barked at the postman"]
    assert bleu(text, text) == pytest.approx(100.0)
    assert chrf(text, text) == pytest.approx(100.0)


def test_bleu_matches_hand_computed_ngram_precisions():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat":
    # clipped matches 1-4 grams 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu([hyp], [ref], tokenize="none") == pytest.approx(expected, abs=1e-6)
    # hyp "the cat sat on" (4 tokens) vs ref of 6: every n-gram matches, BP = exp(1 - 6/4).
    short_hyp, short_ref = "the cat sat on", "the cat sat on the mat"
    assert bleu([short_hyp], [short_ref], tokenize="none") == pytest.approx(
        100 * math.exp(-0.5), abs=1e-6
    )
    # Corpus BLEU pools the counts of both sentences rather than averaging their scores:
    # precisions 9/10, 6/8, 4/6, 2/4; lengths 10 vs 12 give BP = exp(1 - 12/10).
    pooled = 100 * math.exp(-0.2) * (9 / 10 * 6 / 8 * 4 / 6 * 2 / 4) ** 0.25
    got = bleu([hyp, short_hyp], [ref, short_ref], tokenize="none")
    assert got == pytest.approx(pooled, abs=1e-6)


def test_bleu_without_4gram_overlap_is_low_and_equals_sacrebleu():
    hypotheses = ["mat the on sat cat the", "postman the at barked dog a"]
    references = ["the cat sat on the mat", "a dog barked at the postman"]
    got = bleu(hypotheses, references)
    assert got < 10.0
    assert got == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert chrf(hypotheses, references) == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, [references]).score
    )


def test_chrf_of_disjoint_text_is_zero():
    assert chrf(["xyz"], ["abc"]) == 0.0


# --- Accuracy and macro-F1 ----------------------------------------------------------------------


def test_accuracy_and_macro_f1_hand_example():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1,   F1 4/5
    # class 2: TP 1, FP 0, FN 1 -> P 1,   R 1/2, F1 2/3
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert macro_f1(y_true, y_pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_macro_f1_averages_over_classes_in_either_array():
    y_true = [0, 0, 1]
    y_pred = [0, 2, 1]
    # class 0: P 1, R 1/2 -> 2/3; class 1: 1; class 2 (only predicted): 0.
    # Classes 3 and 4 appear in neither array and are left out of the mean.
    assert macro_f1(y_true, y_pred) == pytest.approx(5 / 9)
    assert macro_f1(y_true, y_pred, num_classes=5) == pytest.approx(5 / 9)


def test_macro_f1_matches_keras_f1_score_when_all_classes_appear(rng):
    num_classes = 5
    y_true = rng.integers(0, num_classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, num_classes, 200))
    assert set(y_true) == set(y_pred) == set(range(num_classes))
    metric = keras.metrics.F1Score(average="macro")
    metric.update_state(
        np.eye(num_classes, dtype="float32")[y_true], np.eye(num_classes, dtype="float32")[y_pred]
    )
    expected = float(metric.result())
    assert macro_f1(y_true, y_pred, num_classes) == pytest.approx(expected, rel=1e-5)


def test_macro_f1_rejects_labels_past_num_classes():
    with pytest.raises(ArgumentError, match="out of range"):
        macro_f1([0, 3], [0, 1], num_classes=3)


# --- Entities -----------------------------------------------------------------------------------


def test_entity_spans_hand_examples():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    # I-X after O, or at the start, opens an entity (conlleval).
    assert entity_spans(["O", "I-LOC", "I-LOC"]) == {("LOC", 1, 3)}
    assert entity_spans(["I-LOC", "O"]) == {("LOC", 0, 1)}
    # A type switch inside I- tags closes one entity and opens another.
    assert entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}
    assert entity_spans(["B-PER", "I-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 2), ("LOC", 2, 4)}
    # B- always starts a new entity, even after the same type.
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    assert entity_spans(["O", "O"]) == set()
    assert entity_spans([]) == set()


def test_entity_spans_rejects_unknown_tag():
    with pytest.raises(ArgumentError, match="'PER' at 1"):
        entity_spans(["O", "PER"])


def test_entity_f1_hand_example_partial_match_is_wrong():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O"]]
    # true: PER(0,0-2), LOC(0,3-4), ORG(1,0-2); predicted: PER(0,0-2), ORG(1,0-1).
    # Only PER is right (the ORG span is partial): P = 1/2, R = 1/3, F1 = 2/5.
    scores = entity_f1(true, pred)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 / 5)
    assert scores["per_type_f1"] == {"LOC": 0.0, "ORG": 0.0, "PER": 1.0}


def test_entity_f1_wrong_type_and_spurious_entity():
    true = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O"]]
    pred = [["B-ORG", "I-ORG", "O", "B-LOC"], ["B-LOC", "O"]]
    # true: PER(0,0-2), LOC(1,0-1); predicted: ORG(0,0-2), LOC(0,3-4), LOC(1,0-1).
    # Right: LOC(1,0-1) only. P = 1/3, R = 1/2, F1 = 2/5. LOC: P 1/2, R 1 -> 2/3.
    scores = entity_f1(true, pred)
    assert (scores["precision"], scores["recall"]) == pytest.approx((1 / 3, 1 / 2))
    assert scores["f1"] == pytest.approx(2 / 5)
    assert scores["per_type_f1"] == pytest.approx({"LOC": 2 / 3, "ORG": 0.0, "PER": 0.0})
    perfect = entity_f1(true, true)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)


# --- Perplexity ---------------------------------------------------------------------------------


class _FixedLogits(keras.Model):
    """Logit ``boost`` on the input token's own id and 0 elsewhere, over ``vocab`` ids."""

    def __init__(self, vocab: int, boost: float):
        super().__init__()
        self.vocab = vocab
        self.boost = boost

    def call(self, token_ids):
        return ops.one_hot(token_ids, self.vocab) * self.boost


def test_perplexity_from_total():
    assert perplexity(2 * math.log(3.0), 2) == pytest.approx(3.0)
    with pytest.raises(ArgumentError, match="num_tokens"):
        perplexity(1.0, 0)


def test_uniform_logits_give_perplexity_of_vocab_size(rng):
    vocab = 11
    inputs = rng.integers(1, vocab, (6, 7)).astype("int32")
    targets = rng.integers(1, vocab, (6, 7)).astype("int32")
    targets[:, 5:] = 0
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)
    got = perplexity_of(_FixedLogits(vocab, boost=0.0), dataset)
    assert got == pytest.approx(vocab, abs=1e-4)


def test_padding_targets_are_not_scored():
    vocab, boost = 5, 2.0
    inputs = np.array([[1, 2, 3, 4], [3, 1, 2, 2]], dtype="int32")
    # Real targets equal the inputs (logit `boost` on the right id), 3 padded positions.
    targets = np.array([[1, 2, 3, 0], [3, 1, 0, 0]], dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(1)
    # Each real token has p = e^b / (e^b + V - 1), so perplexity = (e^b + V - 1) / e^b.
    expected = (math.exp(boost) + vocab - 1) / math.exp(boost)
    got = perplexity_of(_FixedLogits(vocab, boost), dataset)
    assert got == pytest.approx(expected, rel=1e-6)
    # Scoring the padded positions (target 0, logit 0) would give a larger value.
    with_padding = perplexity_of(_FixedLogits(vocab, boost), dataset, padding_id=-1)
    assert with_padding > expected + 0.5


# --- Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: bleu(["a b"], ["a b", "c d"]),
        lambda: chrf([], []),
        lambda: accuracy([0, 1, 2], [0, 1]),
        lambda: macro_f1([], []),
        lambda: entity_f1([["O", "B-PER"]], [["O"]]),
        lambda: entity_f1([["O"]], []),
    ],
    ids=["bleu-length", "chrf-empty", "accuracy", "macro-f1-empty", "entity-tags", "entity-seqs"],
)
def test_bad_inputs_raise_one_line_value_error(call):
    with pytest.raises(ValueError) as error:
        call()
    assert isinstance(error.value, ArgumentError)
    assert "\n" not in str(error.value)
