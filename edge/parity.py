"""Parity gate: a converted model must behave like its Keras model on held-out data.

Every conversion to a bundle runs :func:`check_parity`: the TFLite signatures are driven the
way the device drives them (teacher-forced ``encode``/``decode`` or ``prefill``/``decode``
steps, ``classify``/``tag`` rows), their logits compared with the Keras model's on the same
held-out batch (max abs error, top-1 agreement at real tokens), and the task metric of both
computed (translation: greedy BLEU with sacreBLEU; language model: next-token accuracy;
classification and tagging: accuracy against the labels). A result outside the mode's
:class:`Tolerance` raises :class:`ParityError`, one line, before anything is written.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import tensorflow as tf

from keras_transformer.errors import ExitCode
from keras_transformer_edge.convert import ConversionError
from keras_transformer_edge.modes import Tolerance, get_mode
from keras_transformer_edge.runners import lite_model
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.search import continue_tokens
from keras_transformer_edge.runtime.steps import (
    LanguageModelSteps,
    Seq2SeqSteps,
    teacher_forced_logits,
)

IGNORED = -1  # labels the metrics skip (text_data.IGNORED)


class ParityError(ConversionError):
    """A converted model outside its tolerance; the message names what failed, in one line.
    Exit code 1: the input was fine, the model failed its gate."""

    exit_code = ExitCode.FAILED


def _pad(ids: np.ndarray, length: int) -> np.ndarray:
    ids = np.asarray(ids, np.int32)[..., :length]
    return np.pad(ids, [(0, 0)] * (ids.ndim - 1) + [(0, length - ids.shape[-1])])


def _compare(keras_logits, tflite_logits, real) -> dict:
    real = np.asarray(real, bool)
    error = np.abs(keras_logits - tflite_logits).max(axis=-1)
    same = keras_logits.argmax(-1) == tflite_logits.argmax(-1)
    return {
        "max_abs_error": float(error[real].max(initial=0.0)),
        "top1_agreement": float(same[real].mean()) if real.any() else 1.0,
    }


def _seq2seq_logits(model: LiteModel, source, decoder_ids) -> np.ndarray:
    """Teacher-forced logits ``[N, T, V]``: ``encode``, then one ``decode`` per token, through
    the runtime's own step driver."""
    return np.stack(
        [
            teacher_forced_logits(Seq2SeqSteps(model, source_row[None]), target_row)
            for source_row, target_row in zip(source, decoder_ids, strict=True)
        ]
    )


def _device_greedy(model: LiteModel, source, max_length: int, special: dict) -> list[list[int]]:
    """Greedy ids as the device writes them (``search.continue_tokens``), end token left out."""
    outputs = []
    for source_row in source:
        steps = Seq2SeqSteps(model, source_row[None])
        first = steps.feed(np.array([special["start"]], np.int32), 0)[0]
        tokens = continue_tokens(steps.feed, first, 1, max_length + 1, special["end"])
        outputs.append([token for token in tokens if token != special["end"]])
    return outputs


# One traced greedy search per model and length: the main job gates five modes of one model,
# and a new tf.function per call would retrace every time (and TF warns after five).
_greedy_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _GreedySearch:
    """``translate_ids`` of one model as a callable object, not a closure: TF counts the
    traces of every tf.function made from one code object together, so the closures of five
    models loaded one after another (the main job's modes) read to it as one function traced
    five times, and it warns about retracing."""

    def __init__(self, model, max_length: int) -> None:
        self.model = weakref.ref(model)  # a strong reference would keep the cache's key alive
        self.max_length = max_length

    def __call__(self, ids):
        from keras_transformer_pipelines.decoding import translate_ids

        return translate_ids(self.model(), ids, self.max_length)


def _keras_greedy(model, source: np.ndarray, max_length: int, special: dict) -> list[list[int]]:
    functions = _greedy_functions.setdefault(model, {})
    if max_length not in functions:
        functions[max_length] = tf.function(_GreedySearch(model, max_length))
    tokens = functions[max_length](tf.constant(source))
    left_out = (special["pad"], special["end"])
    return [[int(t) for t in row if t not in left_out] for row in tokens.numpy()]


def seq2seq_parity(
    model,
    flatbuffer: bytes,
    batch,
    detokenize: Callable[[list[int]], str],
    references: list[str],
    special: dict,
    max_length: int | None = None,
) -> dict:
    """Logit parity on ``batch`` (the translation pipeline's ``(inputs, labels)``) and the
    greedy BLEU of both models on its sources against ``references`` (one per row).

    ``special``: the tokenizer's ``{"pad", "start", "end"}`` ids. The candidate runs in the
    device runtime's own step and search code.
    """
    from keras_transformer_pipelines.metrics import bleu

    inputs, labels = batch
    source = _pad(inputs["encoder_token_ids"], model.encoder_sequence_length)
    decoder_ids = np.asarray(inputs["decoder_token_ids"], np.int32)
    keras_logits = np.asarray(
        model({"encoder_token_ids": source, "decoder_token_ids": decoder_ids})
    )
    max_length = max_length or model.decoder_sequence_length
    with lite_model(flatbuffer) as candidate:
        tflite_logits = _seq2seq_logits(candidate, source, decoder_ids)
        device_ids = _device_greedy(candidate, source, max_length, special)
    report = _compare(keras_logits, tflite_logits, labels != special["pad"])
    keras_texts = [detokenize(ids) for ids in _keras_greedy(model, source, max_length, special)]
    tflite_texts = [detokenize(ids) for ids in device_ids]
    keras_bleu, tflite_bleu = bleu(keras_texts, references), bleu(tflite_texts, references)
    return {**report, "metric": "bleu", "keras": keras_bleu, "tflite": tflite_bleu}


def _accuracy(logits, labels) -> float:
    labels = np.asarray(labels)
    real = labels != IGNORED
    return 100.0 * float((logits.argmax(-1) == labels)[real].mean()) if real.any() else 100.0


def language_model_parity(model, flatbuffer: bytes, batch) -> dict:
    """Teacher-forced ``prefill`` + ``decode`` logits vs Keras; next-token accuracy."""
    token_ids, labels = (np.asarray(part) for part in batch)
    length = model.sequence_length
    token_ids, labels = _pad(token_ids, length), _pad(labels + 1, length) - 1  # pad -> IGNORED
    with lite_model(flatbuffer) as candidate:
        rows = [LanguageModelSteps(candidate).prefill(row) for row in token_ids]
    tflite_logits, keras_logits = np.stack(rows), np.asarray(model(token_ids))
    report = _compare(keras_logits, tflite_logits, labels != IGNORED)
    return {
        **report,
        "metric": "next_token_accuracy",
        "keras": _accuracy(keras_logits, labels),
        "tflite": _accuracy(tflite_logits, labels),
    }


def classifier_parity(model, flatbuffer: bytes, batch, signature: str) -> dict:
    """``classify`` or ``tag`` logits vs Keras on every row; accuracy against the labels."""
    token_ids, labels = (np.asarray(part) for part in batch)
    token_ids = _pad(token_ids, model.sequence_length)
    if labels.ndim == 2:
        labels = _pad(labels - IGNORED, model.sequence_length) + IGNORED  # pad -> IGNORED
    with lite_model(flatbuffer) as candidate:
        tflite_logits = np.concatenate(
            [candidate.run(signature, token_ids=row[None])["logits"] for row in token_ids]
        )
    keras_logits = np.asarray(model(token_ids))
    real = labels != IGNORED if labels.ndim == 2 else np.ones(len(labels), bool)
    return {
        **_compare(keras_logits, tflite_logits, real),
        "metric": "accuracy",
        "keras": _accuracy(keras_logits, labels),
        "tflite": _accuracy(tflite_logits, labels),
    }


def gate(report: dict, mode: str, tolerance: Tolerance | None = None) -> dict:
    """Add the tolerance and the verdict to ``report``; raise :class:`ParityError` if out."""
    tolerance = tolerance or get_mode(mode).tolerance
    drop = report["keras"] - report["tflite"]
    report = {**report, "mode": mode, "metric_drop": drop, "tolerance": asdict(tolerance)}
    failures = []
    if tolerance.max_abs_error is not None and report["max_abs_error"] > tolerance.max_abs_error:
        failures.append(f"max abs error {report['max_abs_error']:.3g} > {tolerance.max_abs_error}")
    if report["top1_agreement"] < tolerance.min_top1_agreement:
        failures.append(
            f"top-1 agreement {report['top1_agreement']:.3f} < {tolerance.min_top1_agreement}"
        )
    if drop > tolerance.max_metric_drop:
        failures.append(
            f"{report['metric']} {report['tflite']:.2f} vs Keras {report['keras']:.2f} "
            f"(drop {drop:.2f} > {tolerance.max_metric_drop})"
        )
    if failures:
        raise ParityError(f"{mode} parity failed: {'; '.join(failures)}")
    return {**report, "passed": True}
