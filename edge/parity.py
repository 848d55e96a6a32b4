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

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from keras_transformer_edge.convert import ConversionError
from keras_transformer_edge.runtime.signatures import position

PAD_ID, START_ID, END_ID = 0, 1, 2
IGNORED = -1  # labels the metrics skip (text_data.IGNORED)


class ParityError(ConversionError):
    """A converted model outside its tolerance; the message names what failed, in one line."""


@dataclass(frozen=True)
class Tolerance:
    """What a converted model may lose against Keras on held-out data.

    Args:
        max_abs_error: largest logit difference (``None``: reported, not gated; quantized
            logits move by design, the decisions are what count).
        min_top1_agreement: share of real tokens (or rows) with the same arg-max.
        max_metric_drop: BLEU points (translation) or accuracy points (other tasks).
    """

    max_abs_error: float | None
    min_top1_agreement: float
    max_metric_drop: float


# The bounds: dynamic-range int8 within 0.5 BLEU, full int8 (from QAT) within 1.0.
TOLERANCES = {
    "fp32": Tolerance(1e-3, 0.999, 0.1),
    "float16": Tolerance(5e-2, 0.98, 0.5),
    "dynamic_int8": Tolerance(None, 0.9, 0.5),
    "int16_activations": Tolerance(None, 0.9, 0.5),
    "full_int8": Tolerance(None, 0.8, 1.0),
}


def _interpreter(flatbuffer: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer)


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


def _decoder(interpreter, source_row: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``step(token, index) -> logits [V]``: ``encode`` once, then ``decode`` steps that carry
    their KV cache, as the device runs them."""
    decode = interpreter.get_signature_runner("decode")
    encoded = interpreter.get_signature_runner("encode")(source_ids=source_row[None])
    spec = decode.get_input_details()["cache"]
    state = {"cache": np.zeros(spec["shape"], spec["dtype"])}

    def step(token: int, index: int) -> np.ndarray:
        out = decode(
            token=np.array([[token]], np.int32),
            cache=state["cache"],
            index=position(index),
            **encoded,
        )
        state["cache"] = out["cache"]
        return out["logits"][0, -1]

    return step


def _seq2seq_logits(interpreter, source, decoder_ids) -> np.ndarray:
    """Teacher-forced logits ``[N, T, V]`` through ``encode`` and one ``decode`` per token."""
    rows = []
    for source_row, target_row in zip(source, decoder_ids, strict=True):
        step = _decoder(interpreter, source_row)
        rows.append(np.stack([step(int(t), i) for i, t in enumerate(target_row)]))
    return np.stack(rows)


def _tflite_greedy(interpreter, source: np.ndarray, max_length: int) -> list[list[int]]:
    outputs = []
    for source_row in source:
        step, token, tokens = _decoder(interpreter, source_row), START_ID, []
        for index in range(max_length):
            token = int(step(token, index).argmax())
            if token == END_ID:
                break
            tokens.append(token)
        outputs.append(tokens)
    return outputs


def _keras_greedy(model, source: np.ndarray, max_length: int) -> list[list[int]]:
    from keras_transformer_pipelines.decoding import translate_ids

    tokens = tf.function(lambda ids: translate_ids(model, ids, max_length))(tf.constant(source))
    return [[int(t) for t in row if t not in (PAD_ID, END_ID)] for row in tokens.numpy()]


def seq2seq_parity(
    model,
    flatbuffer: bytes,
    batch,
    detokenize: Callable[[list[int]], str],
    references: list[str],
    max_length: int | None = None,
) -> dict:
    """Logit parity on ``batch`` (the translation pipeline's ``(inputs, labels)``) and the
    greedy BLEU of both models on its sources against ``references`` (one per row)."""
    from keras_transformer_pipelines.metrics import bleu

    inputs, labels = batch
    source = _pad(inputs["encoder_token_ids"], model.encoder_sequence_length)
    decoder_ids = np.asarray(inputs["decoder_token_ids"], np.int32)
    interpreter = _interpreter(flatbuffer)
    keras_logits = np.asarray(
        model({"encoder_token_ids": source, "decoder_token_ids": decoder_ids})
    )
    report = _compare(keras_logits, _seq2seq_logits(interpreter, source, decoder_ids), labels != 0)
    max_length = max_length or model.decoder_sequence_length
    keras_texts = [detokenize(ids) for ids in _keras_greedy(model, source, max_length)]
    tflite_texts = [detokenize(ids) for ids in _tflite_greedy(interpreter, source, max_length)]
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
    interpreter = _interpreter(flatbuffer)
    prefill = interpreter.get_signature_runner("prefill")
    decode = interpreter.get_signature_runner("decode")
    prompt = prefill.get_input_details()["tokens"]["shape"][1]
    cache_spec = prefill.get_input_details()["cache"]
    rows = []
    for row in token_ids[:, None]:
        out = prefill(tokens=row[:, :prompt], cache=np.zeros(cache_spec["shape"], np.float32))
        logits, cache = [out["logits"][0]], out["cache"]
        for index in range(prompt, length):
            out = decode(token=row[:, index : index + 1], cache=cache, index=position(index))
            logits.append(out["logits"][0])
            cache = out["cache"]
        rows.append(np.concatenate(logits))
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
    runner = _interpreter(flatbuffer).get_signature_runner(signature)
    tflite_logits = np.concatenate([runner(token_ids=row[None])["logits"] for row in token_ids])
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
    tolerance = tolerance or TOLERANCES[mode]
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
