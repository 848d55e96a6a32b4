"""Calibrated post-training quantization: samples, a per-layer error report, float fallback.

Full-integer modes need activation ranges, measured by running the model on representative
inputs. Each signature is calibrated on the inputs it meets on the device: ``encode`` on
source ids, and ``decode`` on the tokens, KV caches and positions of real teacher-forced
decoding (the caches come from the float TFLite model itself, so they are exactly what the
device would feed back). The examples come from the training pipeline's batches.

The per-layer report and the selective fallback use TFLite's ``QuantizationDebugger`` (it
compares each quantized op's output with the float op's output on the same inputs); the
debugger handles one subgraph, so the report runs each signature on its own, and the final
model keeps all signatures in one file with the worst layers left in float.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_transformer.layers.quantization_points import bounded_scores
from keras_transformer_edge import private_api
from keras_transformer_edge.runners import lite_model
from keras_transformer_edge.runtime.signatures import bucket_name, buckets, row_positions
from keras_transformer_edge.runtime.step_caches import cache_length, resized_step_input
from keras_transformer_edge.runtime.steps import (
    LanguageModelSteps,
    Recording,
    Seq2SeqSteps,
    teacher_forced_logits,
)
from keras_transformer_pipelines.tensorflow_logs import converter_output_filtered

Samples = dict[str, list[dict[str, np.ndarray]]]  # signature name -> its input dicts

log = logging.getLogger(__name__)


def bounded_attention(model):
    """A context inside which every attention layer of ``model`` bounds its masked scores to
    ``[QUANTIZED_MASK_VALUE, 0]`` (``keras_transformer.layers.quantization_points``).

    Without it the scores carry the -1e9 mask value, and a full-int8 scores tensor calibrated
    on them has a step of about 4e6: every real score rounds to the same value and attention
    goes uniform (BLEU 28.6 -> 3.7 on the en-fr model). Bounded, the float model computes
    the same weights to within e^-8 of each masked key's share.
    """
    return bounded_scores(model)


def _pad(ids, length: int) -> np.ndarray:
    ids = np.asarray(ids, np.int32).reshape(-1)[:length]
    return np.pad(ids, (0, length - len(ids)))[None]


def _rows(batches: Iterable, limit: int) -> Iterator:
    """Rows (one example each) of model-input batches, at most ``limit``."""
    count = 0
    for batch in batches:
        inputs = batch[0] if isinstance(batch, tuple) else batch
        if isinstance(inputs, Mapping):
            arrays = {key: np.asarray(value) for key, value in inputs.items()}
            size = len(next(iter(arrays.values())))
            rows = ({key: value[i] for key, value in arrays.items()} for i in range(size))
        else:
            rows = iter(np.asarray(inputs))
        for row in rows:
            if count == limit:
                return
            count += 1
            yield row


def seq2seq_samples(float_flatbuffer: bytes, batches: Iterable, limit: int = 64) -> Samples:
    """``encode`` and ``decode`` inputs from ``limit`` pipeline examples.

    ``batches`` yields ``{"encoder_token_ids", "decoder_token_ids"}`` (as the translation
    pipeline does, with or without labels); every target position becomes a decode sample, fed
    through the runtime's own step driver (``runtime/steps.py``) on the float model.
    """
    samples: Samples = {"encode": [], "decode": []}
    with lite_model(float_flatbuffer) as model:
        recorder = Recording(model, samples)
        source_length = model.input_spec("encode", "source_ids")[0][1]
        max_length = cache_length(model)
        for row in _rows(batches, limit):
            # The full encode is recorded; each length bucket gets the sources cut to it below.
            steps = Seq2SeqSteps(
                recorder, _pad(row["encoder_token_ids"], source_length), bucketed=False
            )
            target = [int(t) for t in row["decoder_token_ids"] if t != 0][:max_length]
            teacher_forced_logits(steps, target)
        for signature in ("decode_beam", "decode_batch"):
            if signature not in model.signatures:
                continue
            # Every row calibrated on a real step: each decode sample repeated per row.
            rows = model.input_spec(signature, "token")[0][0]
            shared_index = not row_positions(model.input_spec(signature, "index")[0], rows)
            samples[signature] = [
                {
                    name: value
                    if name == "index" and shared_index
                    else np.repeat(value, rows, axis=0)
                    for name, value in step.items()
                }
                for step in samples["decode"]
            ]
        _bucket_samples(model, samples, "encode", "source_ids")
        for signature in ("decode", "decode_beam", "decode_batch"):
            if signature in model.signatures:
                _decode_bucket_samples(model, samples, signature)
    return samples


def _decode_bucket_samples(model, samples: Samples, signature: str) -> None:
    """Samples for each ``{signature}_{N}``: the full step's at positions below N, every
    source and cache input cut to N positions; from the sources that fit in N, or all of
    them when none does (each bucket meets the steps of its own sentences)."""
    for length in buckets(model.signatures, signature):
        early = [sample for sample in samples[signature] if int(sample["index"].max()) < length]
        fitting = [sample for sample in early if not sample["source_mask"][:, length:].any()]
        lengths = {"source": length, "target": length}
        samples[bucket_name(signature, length)] = [
            {name: resized_step_input(name, value, lengths) for name, value in sample.items()}
            for sample in fitting or early
        ]


def _bucket_samples(model, samples: Samples, signature: str, name: str) -> None:
    """Samples for each length bucket ``{signature}_{N}``: the full signature's, ``name`` cut
    to its first N positions (the ranges a bucket meets are those of the same sentences)."""
    for length in buckets(model.signatures, signature):
        samples[bucket_name(signature, length)] = [
            {**sample, name: np.ascontiguousarray(sample[name][:, :length])}
            for sample in samples[signature]
        ]


def language_model_samples(float_flatbuffer: bytes, batches: Iterable, limit: int = 64) -> Samples:
    """``prefill`` inputs (each sequence's first tokens) and ``decode`` inputs (the rest)."""
    samples: Samples = {"prefill": [], "decode": []}
    with lite_model(float_flatbuffer) as model:
        recorder = Recording(model, samples)
        max_length = cache_length(model)
        for row in _rows(batches, limit):
            tokens = [int(t) for t in np.asarray(row).reshape(-1) if t != 0][:max_length]
            LanguageModelSteps(recorder, bucketed=False).prefill(tokens)
        _bucket_samples(model, samples, "prefill", "tokens")
    return samples


def classifier_samples(signature: str, length: int, batches: Iterable, limit: int = 256) -> Samples:
    """``classify`` or ``tag`` inputs: token ids padded to the model's length."""
    return {signature: [{"token_ids": _pad(row, length)} for row in _rows(batches, limit)]}


def representative_dataset(samples: Samples):
    """The converter's ``representative_dataset``: ``(signature, inputs)`` for every sample."""

    def generate():
        for signature, inputs in samples.items():
            for sample in inputs:
                yield signature, sample

    return generate


@dataclass(frozen=True)
class LayerError:
    """How far one quantized op's output is from the float op's, on the calibration samples.

    ``relative_error``: RMS of (dequantized - float) over RMS of the float output; about 1
    means the layer's signal is gone (e.g. scores whose int8 range a -1e9 mask blew up).
    ``rmse_over_scale``: the same error in quantization steps; rounding alone gives about
    0.29 (1/sqrt(12)), and far above 1 means the step is too coarse for the values.
    """

    signature: str
    tensor: str
    relative_error: float
    rmse_over_scale: float | None  # None: not an integer tensor (int4 weights, float activations)
    max_abs_error: float | None  # None: not measured (ai-edge-quantizer's validate)

    def as_dict(self) -> dict:
        return asdict(self)


def _max_abs(diffs) -> float:
    return float(np.max(np.abs(diffs), initial=0.0))


def _relative_error(float_output, quantized_output, scale, zero_point) -> float:
    if float_output.size == 0:
        return 0.0
    dequantized = (quantized_output.astype(np.float64) - zero_point) * scale
    error = np.sqrt(np.mean((dequantized - float_output) ** 2))
    return float(error / max(np.sqrt(np.mean(np.square(float_output, dtype=np.float64))), 1e-12))


def _rmse_over_scale(float_output, quantized_output, scale, zero_point) -> float:
    dequantized = (quantized_output.astype(np.float64) - zero_point) * scale
    return float(np.sqrt(np.mean((dequantized - float_output) ** 2)) / scale)


def _debugger(converter, samples: Samples, signature: str, denylisted_nodes=(), denylisted_ops=()):
    """A debugger quantizing with ``converter``, fed ``samples[signature]``."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=_ordered(samples, signature, None),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            # The default max_abs_error fails on the empty tensors of zero-length ops.
            layer_debug_metrics={"max_abs_error": _max_abs},
            denylisted_nodes=list(denylisted_nodes),
            denylisted_ops=list(denylisted_ops),
        ),
    )
    private_api.set_debugger_samples(debugger, lambda inner: _ordered(samples, signature, inner))
    return debugger


def _ordered(samples: Samples, signature: str, interpreter):
    """The debugger feeds inputs positionally, in its interpreter's input order; the names
    there are ``<signature>_<argument>:0``."""

    def generate():
        names = [
            detail["name"].split(":")[0][len(signature) + 1 :]
            for detail in interpreter.get_input_details()
        ]
        for sample in samples[signature]:
            yield [np.asarray(sample[name]) for name in names]

    return generate


def layer_error_report(saved_model: str | Path, samples: Samples) -> list[LayerError]:
    """Every full-int8 op's error against float on ``samples``, worst first.

    ``saved_model``: the export of ``convert.export_saved_model``. Each op is compared with
    the float op run on the same (dequantized) inputs, so an error is the layer's own, not
    accumulated from the layers before it.
    """
    from keras_transformer_edge.convert import make_converter  # convert imports this module

    report = []
    with converter_output_filtered():  # the converter's notices, not a user's concern
        for signature in samples:
            own = {signature: samples[signature]}
            converter = make_converter(saved_model, [signature], "full_int8", own)
            quantizer = _debugger(converter, samples, signature)
            # A second debugger over the same instrumented model that keeps every tensor, so that
            # float and quantized outputs can be compared directly (relative error).
            debugger = tf.lite.experimental.QuantizationDebugger(
                quant_debug_model_content=quantizer.quant_model,
                debug_dataset=private_api.debugger_samples(quantizer),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    layer_debug_metrics={"max_abs_error": _max_abs},
                    layer_direct_compare_metrics={
                        "relative_error": _relative_error,
                        "rmse_over_scale": _rmse_over_scale,
                    },
                ),
            )
            with warnings.catch_warnings():  # empty tensors' statistics are NaN, and skipped
                warnings.simplefilter("ignore", RuntimeWarning)
                debugger.run()
            with tempfile.TemporaryFile("w+") as dump:
                debugger.layer_statistics_dump(dump)
                dump.seek(0)
                rows = list(csv.DictReader(dump))
            report += [
                LayerError(
                    signature=signature,
                    tensor=row["tensor_name"],
                    relative_error=_number(row["relative_error"]),
                    rmse_over_scale=_number(row["rmse_over_scale"]),
                    max_abs_error=_number(row["max_abs_error"]),
                )
                for row in rows
                if _number(row["num_elements"])  # ops with empty outputs lose nothing
            ]
    return sorted(report, key=lambda layer: -layer.relative_error)


def _number(text: str) -> float:
    """A statistic from the debugger's CSV; an overflowed or undefined error counts as inf."""
    value = float(text or "nan")
    return value if math.isfinite(value) else math.inf


def select_fallback(
    report: Sequence[LayerError], threshold: float | None = None, count: int | None = None
) -> list[str]:
    """The tensors to leave in float: relative error above ``threshold``, at most ``count``."""
    chosen = list(report)
    if threshold is not None:
        chosen = [layer for layer in chosen if layer.relative_error > threshold]
    if count is not None:
        chosen = chosen[:count]
    return [layer.tensor for layer in chosen]


def quantize_with_fallback(
    converter, samples: Samples, denylisted_nodes: Sequence[str] = (), denylisted_ops=()
) -> bytes:
    """Full int8 of all of the converter's signatures, leaving in float the ops that write
    ``denylisted_nodes`` and every op of the types ``denylisted_ops`` (e.g. ``"SOFTMAX"``)."""
    signature = next(iter(samples))
    debugger = _debugger(converter, samples, signature, denylisted_nodes, denylisted_ops)
    return debugger.get_nondebug_quantized_model()
