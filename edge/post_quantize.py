"""int4 weights after conversion, with ai-edge-quantizer (the LiteRT team's quantizer).

The TFLite converter has no int4; ai-edge-quantizer (PyPI ``ai-edge-quantizer``, no TensorFlow)
rewrites an already converted float ``.tflite``: its dynamic recipes store FULLY_CONNECTED and
EMBEDDING_LOOKUP weights in int4 (per output channel, or in blocks of 32 inputs) and quantize
activations on the fly. Two facts of our export decide how much it covers:

- every projection (attention, feed-forward, the output head) is a FULLY_CONNECTED with a
  constant weight: covered. BATCH_MATMUL (attention scores, activations only) has no weight.
- a Keras ``Embedding`` converts to GATHER, which its dynamic recipes skip (6.1 MB of the
  8.6M-parameter en-fr model's 34.6 MB escaped: 23.5 MB, not 5). :func:`embedding_lookups`
  exports the embeddings as EMBEDDING_LOOKUP instead, which the recipes cover. The target
  table is also the tied output head's weight: both ops read one int4 tensor.

:func:`quantize` returns the int4 flatbuffer; :func:`tensor_errors` is the quantizer's own
per-tensor comparison with the float model on real inputs (its ``validate``), for the
per-layer error report (``report RUN --mode int4_blockwise``).

Its static recipes (``static_wi8_ai8``, ``static_wi8_ai16``) are not modes here: tried on
our seq2seq export (ai-edge-quantizer 0.10.0, 2026-12-07) they quantize the signatures'
inputs and outputs (the KV caches) unless told not to, and even with float inputs and
bounded attention scores the decode step's logits came out far from float's (int8 and int16
activations alike: top-1 0.55 on a small random model, while ``encode`` was fine). Mixed int4/int8
recipes chosen for accuracy are not either: docs/int4-recipes.md measured fourteen on a
1,410-step model, and the ones within the parity gate are 6.8-10.7 MB, no better a trade than
dynamic int8's 9.0 MB. ``int4_mixed`` mixes for speed instead: int8 in the encoder only.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from keras_transformer_edge import private_api
from keras_transformer_edge.calibration import LayerError

# The encoder's projections: Keras names its stack "encoder" (``encoder_1/layer_0_1/...`` in
# the converted graph); nothing in a decode step's graph carries the name.
ENCODER_OPS = r"(^|/)encoder(_\d+)?/"

# mode -> ai-edge-quantizer recipe: a function of ai_edge_quantizer.recipe, or dynamic
# entries (output-name regex, op, bits, granularity, algorithm; a later entry wins).
RECIPES = {
    "int4": "dynamic_wi4_afp32",  # int4 per output channel
    "int4_blockwise": "dynamic_wi4b32_afp32",  # int4 in blocks of 32 inputs, a scale each
    # int4 where one row a step reads the weights (XNNPACK's int4 kernels: a one-row decode
    # step 2.4x faster than int8), int8 in the encoder's feed-forward layers, which multiply
    # 8-64 rows at once (int4 encode 2.7x slower than int8; the 3+1 student, 12-08, on an
    # AMX Xeon). Its attention projections too in int8: 5.44 MB instead of 4.95 (each encode
    # bucket's graph keeps its own per-channel scales), for 0.2 ms less a sentence.
    "int4_mixed": [
        (".*", "*", 4, "BLOCKWISE_32", "min_max"),
        (ENCODER_OPS + ".*feedforward", "FULLY_CONNECTED", 8, "CHANNELWISE", "min_max"),
    ],
}


@tf.function(
    experimental_implements="embedding_matmul",
    input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None], tf.int32)],
)
def _lookup(table, ids):
    """Rows ``ids`` of ``table``. The converter's composite-function pass replaces this whole
    function (by its ``embedding_matmul`` name) with one EMBEDDING_LOOKUP op; the body, a
    one-hot matmul, is the reference it stands for and only runs in TensorFlow."""
    one_hot = tf.cast(tf.equal(ids[:, None], tf.range(tf.shape(table)[0])), table.dtype)
    return tf.matmul(one_hot, table)


@contextlib.contextmanager
def embedding_lookups(model: keras.Model) -> Iterator[keras.Model]:
    """Inside, every ``keras.layers.Embedding`` of ``model`` looks up through
    :func:`_lookup` (exported as EMBEDDING_LOOKUP); outside, as before. The values are the same
    rows either way."""
    layers = [
        layer for layer in private_api.nested_layers(model) if type(layer) is keras.layers.Embedding
    ]

    def lookup_call(layer):
        def call(inputs):
            ids = tf.cast(inputs, tf.int32)
            rows = _lookup(tf.convert_to_tensor(layer.embeddings), tf.reshape(ids, [-1]))
            return tf.reshape(rows, tf.concat([tf.shape(ids), [layer.output_dim]], 0))

        return call

    for layer in layers:
        layer.call = lookup_call(layer)  # an instance attribute: Layer.__call__ finds it first
    try:
        yield model
    finally:
        for layer in layers:
            del layer.call


def float_model(model: keras.Model, endpoints, workdir: str | Path | None = None) -> bytes:
    """The float ``.tflite`` of ``endpoints`` that the quantizer rewrites: exported with
    :func:`embedding_lookups`, so the embeddings are weights it covers."""
    from keras_transformer_edge.convert import convert_saved_model, export_saved_model

    with tempfile.TemporaryDirectory() as scratch:
        with embedding_lookups(model):
            saved = export_saved_model(model, endpoints, Path(workdir or scratch) / "saved")
        return convert_saved_model(saved, endpoints, "fp32")


def _quantized(float_flatbuffer: bytes, recipe, samples: dict | None = None):
    """``(engine, result)`` of ai-edge-quantizer on ``recipe``, calibrated on ``samples``
    (signature -> input dicts) when the recipe needs it (e.g. GPTQ)."""
    from ai_edge_quantizer import quantizer

    engine = quantizer.Quantizer(bytearray(float_flatbuffer))
    engine.load_quantization_recipe(recipe)
    if engine.need_calibration and samples is None:
        raise ValueError("this ai-edge-quantizer recipe needs calibration samples")
    # ai-edge-quantizer 0.10 does not pass enable_progress_bar on to its transformation step,
    # whose tqdm bar then goes to stderr for any model of 100 tensors or more.
    with contextlib.redirect_stderr(io.StringIO()):
        calibrated = (
            engine.calibrate(samples, num_threads=os.cpu_count() or 1)
            if engine.need_calibration
            else None
        )
        result = engine.quantize(
            calibrated, enable_progress_bar=False, enable_progress_report=False
        )
    return engine, result


def dynamic_recipe(entries: list[tuple]):
    """An ai-edge-quantizer recipe of dynamic (weight-only) entries ``(output-name regex, op,
    bits, granularity, algorithm)``; op ``"*"``: every op it supports; a later entry wins."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    algorithms = {
        "min_max": algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT,
        "octav": algorithm_manager.AlgorithmName.OCTAV,
        "gptq": algorithm_manager.AlgorithmName.GPTQ,
        "mse": algorithm_manager.AlgorithmName.MSE,
        "decomposed_hadamard": algorithm_manager.AlgorithmName.DECOMPOSED_HADAMARD_ROTATION,
    }
    manager = recipe_manager.RecipeManager()
    for regex, op, bits, granularity, algorithm in entries:
        manager.add_dynamic_config(
            regex,
            qtyping.TFLOperationName.ALL_SUPPORTED if op == "*" else qtyping.TFLOperationName[op],
            bits,
            qtyping.QuantGranularity[granularity],
            algorithms[algorithm],
        )
    return manager.get_quantization_recipe()


def _recipe(mode: str):
    from ai_edge_quantizer import recipe

    named = RECIPES[mode]
    return getattr(recipe, named)() if isinstance(named, str) else dynamic_recipe(named)


def quantize_recipe(float_flatbuffer: bytes, recipe, samples: dict | None = None) -> bytes:
    """The float model rewritten by any ai-edge-quantizer ``recipe`` (``samples``: calibration
    inputs, for recipes that need them), its buffers inline."""
    _, result = _quantized(float_flatbuffer, recipe, samples)
    return inline_buffers(bytes(result.quantized_model))


def quantize(float_flatbuffer: bytes, mode: str) -> bytes:
    """The float model with int4 weights as ``mode`` (a key of :data:`RECIPES`) says."""
    return quantize_recipe(float_flatbuffer, _recipe(mode))


def tensor_errors(
    float_flatbuffer: bytes, mode: str, samples: dict, limit: int = 8
) -> list[LayerError]:
    """Every tensor of ``mode``'s model against the float model's, worst first, by
    ai-edge-quantizer's ``validate`` on real inputs: ``samples`` (signature -> input dicts, as
    ``convert.calibration_samples`` makes them), the first ``limit`` of each signature.

    The quantized model runs end to end, so an activation's error is accumulated from the
    layers before it (unlike full int8's report, which feeds each op float inputs). Only
    activations are listed: the quantizer's constant comparison reads an int4 weight as it is
    stored, not dequantized (ratios of 3 and more on weights whose outputs are fine, 0.10.0).
    ``relative_error`` is the RMS error over the float
    tensor's RMS, from the quantizer's signal-to-noise power ratio: 1 / sqrt(SNR). A tensor
    with no signal (empty, or all zeros: its SNR is 0) has no relative error and is left out.
    """
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    engine, _ = _quantized(float_flatbuffer, _recipe(mode))
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars (see _quantized)
        result = engine.validate(
            {signature: list(inputs)[:limit] for signature, inputs in samples.items()},
            error_metrics=[ValidationErrorMetric.SNR],
            num_threads=os.cpu_count() or 1,
        )
    errors = []
    for signature in result.available_signature_keys():
        compared = result.get_signature_comparison_result(signature)
        for group in (compared.intermediate_tensors, compared.output_tensors):
            for tensor, metrics in group.items():
                snr = float(metrics["snr"])
                if snr > 0:
                    errors.append(LayerError(signature, tensor, 1 / math.sqrt(snr), None, None))
    return sorted(errors, key=lambda error: error.relative_error, reverse=True)


def inline_buffers(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with every buffer stored inside the flatbuffer itself.

    ai-edge-quantizer writes weights after the flatbuffer's end, found by ``Buffer.offset``
    (the >2 GB layout). Anything that re-packs the model from the schema (adding the bundle's
    metadata) keeps the table and loses that tail: a 5 MB model came out 1.7 MB and unreadable
    ("Constant buffer 1 specified an out of range offset"). Inline, it is an ordinary model.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    moved = 0
    for buffer in model.buffers or []:
        if buffer.offset > 1:  # 0: inline; 1: the placeholder of an empty external buffer
            start, size = buffer.offset, buffer.size
            buffer.data = np.frombuffer(flatbuffer, np.uint8, size, start).copy()
            buffer.offset = buffer.size = 0
            moved += 1
    if not moved:
        return flatbuffer
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
