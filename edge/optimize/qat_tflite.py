"""A quantization-aware model to a full-int8 .tflite with the step signatures of convert.py."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel
from keras_transformer_edge import private_api
from keras_transformer_edge.convert import ConversionError, check_builtin_ops
from keras_transformer_edge.optimize.checks import _batches, _check_int, _check_tf_keras_model
from keras_transformer_edge.optimize.qat import _quantize_wrapper
from keras_transformer_edge.runners import wrapper_runner
from keras_transformer_edge.runtime.step_caches import cache_length
from keras_transformer_edge.runtime.steps import (
    LanguageModelSteps,
    Recording,
    Seq2SeqSteps,
    teacher_forced_logits,
)
from keras_transformer_edge.tfkeras_bridge import KerasModelLayer, bridge_layer


def _signature_functions(
    wrapper, bridge: KerasModelLayer
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """tf.functions of the bridge endpoints, called through the quantize wrapper."""
    signatures = {}
    for name, specs in bridge.endpoint_signatures.items():
        arguments = bridge.endpoint_argument_names(name)
        named = [tf.TensorSpec(s.shape, s.dtype, name=a) for s, a in zip(specs, arguments)]

        def endpoint(*values, name=name, arguments=arguments):
            return wrapper(dict(zip(arguments, values)), training=False, endpoint=name)

        signatures[name] = tf.function(endpoint, input_signature=named).get_concrete_function()
    return signatures


def representative_samples(
    quantized: tf_keras.Model, batches: Iterable, steps: int | None = None
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of every signature, from model-input ``batches`` run through the quantized
    model: ``encode`` on each source row and ``decode`` on every step of its target (teacher
    forcing); ``prefill`` and ``decode`` likewise for a language model."""
    bridge = bridge_layer(quantized)
    model = bridge.model
    samples: dict[str, list] = {name: [] for name in bridge.endpoint_signatures}
    if not samples:
        raise ArgumentError(f"{type(model).__name__} has no encode/decode signatures")
    recorder = Recording(wrapper_runner(_quantize_wrapper(quantized), bridge), samples)
    max_length = cache_length(recorder)
    for batch in _batches("representative_samples", batches, steps or 1 << 30):
        if isinstance(model, Seq2SeqTransformer):
            source_length = recorder.input_spec("encode", "source_ids")[0][1]
            for source, target in zip(
                np.asarray(batch["encoder_token_ids"]), np.asarray(batch["decoder_token_ids"])
            ):
                padded = np.zeros((1, source_length), np.int32)
                padded[0, : min(len(source), source_length)] = source[:source_length]
                tokens = [int(target[0])] + list(
                    itertools.takewhile(lambda token: token != 0, map(int, target[1:]))
                )
                teacher_forced_logits(Seq2SeqSteps(recorder, padded), tokens[:max_length])
        else:
            for tokens in np.asarray(batch):
                LanguageModelSteps(recorder).prefill(tokens[:max_length])
    return samples


def convert_quantization_aware(
    quantized: tf_keras.Model,
    calibration_data: Iterable | tf.data.Dataset,
    calibration_steps: int = 4,
    workdir: str | Path | None = None,
) -> bytes:
    """A full-int8 .tflite of a :func:`quantization_aware` model, builtin ops only.

    The signatures are ``convert.py``'s (``encode``/``decode`` for a seq2seq model,
    ``prefill``/``decode`` for a language model), each run through the fake-quant points;
    inputs and outputs stay float (int32/bool for ids, index and mask). Ranges come from the
    fake-quant points; tensors without one are calibrated on ``calibration_data`` (model
    inputs, or ``(inputs, targets)``), run through the same signatures.
    """
    _check_tf_keras_model("convert_quantization_aware", quantized)
    wrapper = _quantize_wrapper(quantized)
    bridge = bridge_layer(quantized)
    if not isinstance(bridge.model, (Seq2SeqTransformer, TransformerLanguageModel)) or (
        not bridge.endpoint_signatures
    ):
        raise ArgumentError(
            "convert_quantization_aware: needs a Seq2SeqTransformer, or a "
            "TransformerLanguageModel made with prefill_length"
        )
    _check_int("convert_quantization_aware", "calibration_steps", calibration_steps, 1)
    samples = representative_samples(quantized, calibration_data, calibration_steps)

    def representative_dataset():
        for name, inputs in samples.items():
            for sample in inputs:
                yield name, sample

    signatures = _signature_functions(wrapper, bridge)
    module = tf.Module()
    # The variables only: saving the tf-keras model would also trace its training-mode call,
    # whose dropout reads Keras 3 seed-generator state that tf-keras does not track.
    module.state = list(quantized.variables)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(workdir or scratch) / "quantization_aware_saved_model"
        tf.saved_model.save(module, str(directory), signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(directory), signature_keys=list(signatures)
        )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter's own errors, with long logs
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise ConversionError(f"full-int8 conversion failed: {lines[0]}") from None
    check_builtin_ops(flatbuffer)
    return flatbuffer


def float_operator_count(flatbuffer: bytes) -> dict[str, int]:
    """Ops of a .tflite whose output is float32, by name, apart from the I/O (de)quantizes:
    an empty dict means int8 throughout."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    counts: dict[str, int] = {}
    for op in private_api.op_details(interpreter):
        if op["op_name"] == "DEQUANTIZE":
            continue
        outputs = [tensors[i]["dtype"] for i in op["outputs"] if i in tensors]
        if any(dtype == np.float32 for dtype in outputs):
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts
