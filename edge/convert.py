"""Keras models to TFLite through the SavedModel path, with named signatures and static shapes.

Generation is exported as single steps, never as an in-graph loop: ``encode`` (source ids ->
cross-attention cache and source mask) and ``decode`` (one token at a position against an
explicit, fixed-size KV cache passed in and returned) for a ``Seq2SeqTransformer``; ``prefill``
and ``decode`` for a ``TransformerLanguageModel`` (``endpoints.py`` builds them; its names are
re-exported here). The host runs the loop.

Only TFLite builtin ops are allowed: a model that would need Flex (SELECT_TF_OPS) ops is an
error naming the ops, because ai-edge-litert's wheel cannot run them and they disable XNNPACK.
Keras's ``model.export(format="litert")`` turns Flex on by itself, so the conversion is done
here with ``ExportArchive`` and ``TFLiteConverter.from_saved_model``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import tensorflow as tf

from keras_transformer_edge import private_api
from keras_transformer_edge.calibration import (
    Samples,
    bounded_attention,
    classifier_samples,
    language_model_samples,
    quantize_with_fallback,
    representative_dataset,
    seq2seq_samples,
)
from keras_transformer_edge.endpoints import (  # noqa: F401  (the public API: re-exported)
    POSITION,
    ConversionError,
    Endpoints,
    classifier_endpoints,
    decode_length_buckets,
    language_model_endpoints,
    length_buckets,
    seq2seq_endpoints,
)
from keras_transformer_edge.modes import (
    CALIBRATED_MODES,
    CONVERTER_MODES,
    CONVERTIBLE_MODES,
    POST_QUANTIZED_MODES,
)
from keras_transformer_pipelines.tensorflow_logs import converter_output_filtered

# The modes the TFLite converter produces (modes.py defines every mode).
MODES = CONVERTER_MODES


def export_saved_model(model: keras.Model, endpoints: Endpoints, directory: str | Path) -> Path:
    """A SavedModel with one signature per endpoint, sharing the model's variables."""
    directory = Path(directory)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=signature)
    shutil.rmtree(directory, ignore_errors=True)
    with converter_output_filtered():
        archive.write_out(str(directory), verbose=False)
    return directory


def _flex_ops(message: str) -> list[str]:
    return sorted(set(re.findall(r"Flex\w+|tf\.\w+", message)))


def make_converter(
    directory: str | Path,
    signature_keys: Iterable[str],
    mode: str = "fp32",
    samples: Samples | None = None,
) -> tf.lite.TFLiteConverter:
    """A TFLite converter for ``mode``, builtin ops only.

    Modes: ``"fp32"``; ``"float16"`` (weights stored as float16); ``"dynamic_int8"`` (int8
    weights, float activations); ``"full_int8"`` (int8 weights and activations, calibrated on
    ``samples``; an op with no int8 kernel stays float); ``"int16_activations"`` (int8
    weights, int16 activations where TFLite has 16x8 kernels, float elsewhere).
    """
    if mode not in MODES:
        raise ConversionError(f"unknown quantization mode {mode!r}; valid modes: {MODES}")
    if mode in CALIBRATED_MODES and not samples:
        raise ConversionError(f"mode {mode!r} needs calibration samples (representative inputs)")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(directory), signature_keys=list(signature_keys)
    )
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    converter.target_spec.supported_ops = {
        "full_int8": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins],
        "int16_activations": [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            builtins,
        ],
    }.get(mode, [builtins])
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "dynamic_int8":
        # Per-tensor dense weights: the tied output projection then shares the int8 bytes of
        # the embedding table it is tied to (gathers are per-tensor), where per-channel would
        # store the table twice. Measured on the en-fr model: 0.255x instead of 0.308x the
        # fp32 size, greedy BLEU on 400 test sentences 26.94 vs 26.84 per-channel.
        private_api.per_tensor_dense_weights(converter)
    if mode in CALIBRATED_MODES:
        converter.representative_dataset = representative_dataset(samples)
    return converter


def convert_saved_model(
    directory: str | Path,
    signature_keys: Iterable[str],
    mode: str = "fp32",
    samples: Samples | None = None,
    float_fallback: Sequence[str] = (),
) -> bytes:
    """A .tflite flatbuffer with the given signatures, builtin ops only.

    Args:
        mode: one of ``MODES`` (see :func:`make_converter`).
        samples: calibration inputs per signature (``calibration.seq2seq_samples`` and
            friends), for the calibrated modes.
        float_fallback: for ``"full_int8"``, tensors (op outputs, as named by
            ``calibration.layer_error_report``) whose ops stay float.
    """
    signature_keys = list(signature_keys)
    converter = make_converter(directory, signature_keys, mode, samples)
    if float_fallback and mode != "full_int8":
        raise ConversionError(f"float_fallback applies to full_int8 only, not {mode!r}")
    try:
        with _one_line_errors(), converter_output_filtered():
            if float_fallback:
                flatbuffer = quantize_with_fallback(converter, samples, float_fallback)
            else:
                flatbuffer = converter.convert()
    except ConversionError as error:
        if mode == "int16_activations" and "Max and min for dynamic tensors" in str(error):
            raise ConversionError(
                "int16_activations: TFLite's 16x8 quantizer cannot calibrate the integer "
                "token-id inputs every model here has (tensorflow/tensorflow#60799); use "
                "full_int8 or dynamic_int8"
            ) from None
        raise
    check_builtin_ops(flatbuffer)
    return flatbuffer


@contextlib.contextmanager
def _one_line_errors():
    """The converter raises its own error types with long logs: one line naming the cause."""
    try:
        yield
    except ConversionError:
        raise
    except Exception as error:
        text = str(error)
        ops = _flex_ops(text) if "Flex" in text or "TF Select" in text else []
        if ops:
            raise ConversionError(f"needs Flex (SELECT_TF_OPS) ops: {', '.join(ops)}") from None
        lines = text.strip().splitlines() or [type(error).__name__]
        raise ConversionError(f"TFLite conversion failed: {lines[0]}") from None


def op_names(flatbuffer: bytes) -> list[str]:
    """The distinct op names of a .tflite model (custom ops by their custom name)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=flatbuffer)
    except (RuntimeError, ValueError) as error:  # e.g. an op this runtime cannot resolve
        raise ConversionError(f"the runtime cannot load the model: {error}") from None
    return sorted({op["op_name"] for op in private_api.op_details(interpreter)})


def check_builtin_ops(flatbuffer: bytes) -> None:
    """Raise ``ConversionError`` naming any Flex or custom op left in the model."""
    bad = [name for name in op_names(flatbuffer) if name.startswith("Flex") or name == "CUSTOM"]
    if bad:
        raise ConversionError(f"the converted model holds non-builtin ops: {', '.join(bad)}")


def calibration_samples(float_flatbuffer: bytes, endpoints: Endpoints, batches, limit: int = 64):
    """Calibration inputs for every signature of ``endpoints`` from pipeline ``batches``."""
    if "encode" in endpoints:
        return seq2seq_samples(float_flatbuffer, batches, limit)
    if "prefill" in endpoints:
        return language_model_samples(float_flatbuffer, batches, limit)
    (name, (_, [spec])), *_ = endpoints.items()
    return classifier_samples(name, spec.shape[1], batches, limit)


def convert(
    model: keras.Model,
    endpoints: Endpoints,
    mode: str = "fp32",
    calibration: Iterable | None = None,
    float_fallback: Sequence[str] = (),
    workdir: str | Path | None = None,
) -> bytes:
    """Export ``endpoints`` of ``model`` and convert them to one .tflite with shared weights.

    ``calibration``: model-input batches from the training pipeline, for the calibrated
    modes (run through the fp32 model to get every signature's inputs).
    """
    if mode not in CONVERTIBLE_MODES:
        raise ConversionError(
            f"unknown quantization mode {mode!r}; valid modes: {CONVERTIBLE_MODES}"
        )
    if mode in POST_QUANTIZED_MODES:
        from keras_transformer_edge import post_quantize

        float_flatbuffer = post_quantize.float_model(model, endpoints, workdir)
        with _one_line_errors():
            flatbuffer = post_quantize.quantize(float_flatbuffer, mode)
        check_builtin_ops(flatbuffer)
        return flatbuffer
    calibrated = mode in CALIBRATED_MODES
    with tempfile.TemporaryDirectory() as scratch:
        # Integer activations need attention scores with a small range: see bounded_attention.
        with bounded_attention(model) if calibrated else contextlib.nullcontext():
            saved = export_saved_model(model, endpoints, Path(workdir or scratch) / "saved_model")
        samples = None
        if calibrated:
            if calibration is None:
                raise ConversionError(f"mode {mode!r} needs calibration batches")
            float_flatbuffer = convert_saved_model(saved, endpoints, "fp32")
            samples = calibration_samples(float_flatbuffer, endpoints, calibration)
        return convert_saved_model(saved, endpoints, mode, samples, float_fallback)
