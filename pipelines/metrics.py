"""Corpus-level evaluation on the host: BLEU and chrF (sacrebleu), accuracy and macro-F1,
entity-level F1 for BIO-tagged NER, and perplexity of a language model over a dataset.

Each function takes whole corpora (lists or arrays), not batches, and returns plain Python
numbers. Bad inputs (mismatched lengths, empty corpora) raise
:class:`keras_transformer.ArgumentError`, a ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import math
from collections import Counter

import keras
import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from keras_transformer import ArgumentError


def _check_pair(name: str, first: str, second: str, a_len: int, b_len: int) -> None:
    if a_len != b_len:
        raise ArgumentError(f"{name}: {a_len} {first} but {b_len} {second}; they must pair up")
    if a_len == 0:
        raise ArgumentError(f"{name}: got no {first} and no {second}")


# --- Text generation ----------------------------------------------------------------------------


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """Corpus BLEU in ``[0, 100]`` with one reference per hypothesis (sacrebleu's defaults).

    Args:
        tokenize: sacrebleu tokenizer name: ``"13a"`` (mteval's, the default), ``"intl"``,
            ``"zh"``, ``"char"``, ``"none"`` (split on spaces only), ...
    """
    _check_pair("bleu", "hypotheses", "references", len(hypotheses), len(references))
    return float(BLEU(tokenize=tokenize).corpus_score(list(hypotheses), [list(references)]).score)


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (character 6-grams, beta 2) in ``[0, 100]``, one reference per hypothesis."""
    _check_pair("chrf", "hypotheses", "references", len(hypotheses), len(references))
    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


# --- Classification -----------------------------------------------------------------------------


def _labels(y_true, y_pred, name: str) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    _check_pair(name, "true labels", "predicted labels", y_true.size, y_pred.size)
    for array in (y_true, y_pred):
        if not np.issubdtype(array.dtype, np.integer):
            raise ArgumentError(f"{name}: labels must be integers, got dtype {array.dtype}")
        if array.min() < 0:
            raise ArgumentError(f"{name}: labels must be >= 0, got {array.min()}")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Share of positions where the integer label ``y_pred`` equals ``y_true``."""
    y_true, y_pred = _labels(y_true, y_pred, "accuracy")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``y_true`` or ``y_pred``.

    This is scikit-learn's ``f1_score(average="macro", zero_division=0)``: a class that only
    appears in the predictions has F1 0 and counts; a class in neither is left out (its F1
    is 0/0), so ``num_classes`` only sizes the counts and checks that labels are below it.
    Per class, ``F1 = 2 TP / (2 TP + FP + FN)``, the harmonic mean of precision and recall.
    """
    y_true, y_pred = _labels(y_true, y_pred, "macro_f1")
    largest = int(max(y_true.max(), y_pred.max()))
    if num_classes is not None and largest >= num_classes:
        raise ArgumentError(f"macro_f1: label {largest} is out of range for {num_classes} classes")
    size = num_classes if num_classes is not None else largest + 1
    # Confusion counts with numpy; scikit-learn is not a dependency of this project.
    confusion = np.bincount(y_true * size + y_pred, minlength=size * size).reshape(size, size)
    true_positive = np.diag(confusion)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    denominator = 2 * true_positive + false_positive + false_negative
    per_class = 2 * true_positive[present] / denominator[present]
    return float(per_class.mean())


# --- Named-entity recognition -------------------------------------------------------------------

# Entity spans are written out here rather than taken from seqeval: seqeval is unmaintained and
# pulls in scikit-learn, and the conlleval span rule below is about twenty lines.


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` (end exclusive) in one BIO / IOB2 tag sequence.

    conlleval's rule: ``B-X`` always starts an entity; ``I-X`` continues the open entity when
    it is of type ``X`` and otherwise starts a new one (after ``O``, at the start, or after
    another type); ``O`` closes the open entity.
    """
    spans: set[tuple[str, int, int]] = set()
    open_type: str | None = None
    start = 0
    for position, tag in enumerate(tags):
        if tag == "O":
            prefix, kind = "O", None
        elif len(tag) > 2 and tag[:2] in ("B-", "I-"):
            prefix, kind = tag[0], tag[2:]
        else:
            raise ArgumentError(f"entity_spans: tag {tag!r} at {position} is not O, B-X or I-X")
        continues = prefix == "I" and kind == open_type
        if open_type is not None and not continues:
            spans.add((open_type, start, position))
            open_type = None
        if kind is not None and not continues:
            open_type, start = kind, position
    if open_type is not None:
        spans.add((open_type, start, len(tags)))
    return spans


def _precision_recall_f1(correct: int, predicted: int, actual: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_f1(true_sequences: list[list[str]], pred_sequences: list[list[str]]) -> dict:
    """Entity-level scores over a corpus of BIO tag sequences (conlleval / seqeval).

    An entity is right only when its type, start and end all match; partial overlaps count
    as one false positive and one false negative. Precision, recall and F1 are micro-averaged
    over all entities; undefined ratios are 0.

    Returns:
        ``{"precision", "recall", "f1"}`` as floats, and ``"per_type_f1"``: ``{type: f1}`` for
        every type found in the true or predicted tags.
    """
    _check_pair(
        "entity_f1",
        "true sequences",
        "predicted sequences",
        len(true_sequences),
        len(pred_sequences),
    )
    actual: set[tuple[int, str, int, int]] = set()
    predicted: set[tuple[int, str, int, int]] = set()
    for index, (true_tags, pred_tags) in enumerate(zip(true_sequences, pred_sequences)):
        if len(true_tags) != len(pred_tags):
            raise ArgumentError(
                f"entity_f1: sequence {index} has {len(true_tags)} true tags but "
                f"{len(pred_tags)} predicted tags"
            )
        actual.update((index, *span) for span in entity_spans(true_tags))
        predicted.update((index, *span) for span in entity_spans(pred_tags))
    correct = actual & predicted
    precision, recall, f1 = _precision_recall_f1(len(correct), len(predicted), len(actual))
    counts = [Counter(entity[1] for entity in group) for group in (correct, predicted, actual)]
    per_type = {
        kind: _precision_recall_f1(counts[0][kind], counts[1][kind], counts[2][kind])[2]
        for kind in sorted(set(counts[1]) | set(counts[2]))
    }
    return {"precision": precision, "recall": recall, "f1": f1, "per_type_f1": per_type}


# --- Language modelling -------------------------------------------------------------------------


def perplexity(total_negative_log_likelihood: float, num_tokens: int) -> float:
    """``exp(total_negative_log_likelihood / num_tokens)``, the NLL summed in nats."""
    if num_tokens <= 0:
        raise ArgumentError(f"perplexity: num_tokens must be > 0, got {num_tokens}")
    return math.exp(total_negative_log_likelihood / num_tokens)


def perplexity_of(model: keras.Model, dataset, padding_id: int = 0) -> float:
    """Perplexity of ``model`` over ``dataset``, counting only non-padding target tokens.

    Args:
        model: returns logits of shape ``(batch, length, vocab)`` for a batch of inputs.
        dataset: iterable (e.g. ``tf.data.Dataset``) of ``(inputs, target_ids)`` batches, the
            targets of shape ``(batch, length)``.
        padding_id: target id that is not a token; those positions are not scored.
    """
    total = 0.0
    count = 0
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ArgumentError("perplexity_of: dataset must yield (inputs, target_ids) pairs")
        inputs, targets = batch
        logits = keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float64)
        targets = np.asarray(keras.ops.convert_to_numpy(targets)).astype(np.int64)
        if logits.shape[:-1] != targets.shape:
            raise ArgumentError(
                f"perplexity_of: logits of shape {logits.shape} do not fit targets of shape "
                f"{targets.shape}"
            )
        real = targets != padding_id
        # log p(y) = z_y - logsumexp(z), in float64 so long corpora sum without drift.
        peak = logits.max(axis=-1, keepdims=True)
        log_normalizer = peak[..., 0] + np.log(np.exp(logits - peak).sum(axis=-1))
        gather = np.where(real, targets, 0)[..., None]
        true_logit = np.take_along_axis(logits, gather, axis=-1)[..., 0]
        total += float(np.sum((log_normalizer - true_logit)[real]))
        count += int(real.sum())
    if count == 0:
        raise ArgumentError("perplexity_of: the dataset has no non-padding target tokens")
    return perplexity(total, count)
