"""Keras models to TFLite through the SavedModel path, with named signatures and static shapes.

Generation is exported as single steps, never as an in-graph loop: ``encode`` (source ids ->
cross-attention cache and source mask) and ``decode`` (one token at a position against an
explicit, fixed-size KV cache passed in and returned) for a ``Seq2SeqTransformer``; ``prefill``
and ``decode`` for a ``TransformerLanguageModel``. The host runs the loop.

Only TFLite builtin ops are allowed: a model that would need Flex (SELECT_TF_OPS) ops is an
error naming the ops, because ai-edge-litert's wheel cannot run them and they disable XNNPACK.
Keras's ``model.export(format="litert")`` turns Flex on by itself, so the conversion is done
here with ``ExportArchive`` and ``TFLiteConverter.from_saved_model``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import tensorflow as tf

from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)

Endpoints = dict[str, tuple[Callable, list[tf.TensorSpec]]]
MODES = ("fp32", "float16", "dynamic_int8")


class ConversionError(ValueError):
    """A model that cannot be converted as asked; the message is one line and names the cause."""


def seq2seq_endpoints(
    model: Seq2SeqTransformer, batch_size: int = 1, beam_size: int = 1
) -> Endpoints:
    """``encode`` and ``decode`` signatures with static shapes for ``batch_size`` rows.

    With ``beam_size > 1``, a ``decode_beam`` signature runs ``batch_size * beam_size`` rows,
    so the host's beam search advances every beam in one call (weights shared in the file).
    """
    model.ensure_built()
    source = tf.TensorSpec((batch_size, model.encoder_sequence_length), tf.int32)
    encoder_output, _ = model.encode(tf.zeros(source.shape, tf.int32))
    cross_shape = model.cross_attention_cache(encoder_output).shape[1:]

    def encode(source_ids):
        output, mask = model.encode(source_ids)
        return {"cross_attention_cache": model.cross_attention_cache(output), "source_mask": mask}

    def decode(token, cache, index, cross_attention_cache, source_mask):
        logits, cache = model.decode(token, cache, index, cross_attention_cache, source_mask)
        return {"logits": logits, "cache": cache}

    def decode_signature(rows: int) -> list[tf.TensorSpec]:
        return [
            tf.TensorSpec((rows, 1), tf.int32),
            tf.TensorSpec(model.init_cache(rows).shape, tf.float32),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((rows, *cross_shape), tf.float32),
            tf.TensorSpec((rows, source.shape[1]), tf.bool),
        ]

    endpoints = {"encode": (encode, [source]), "decode": (decode, decode_signature(batch_size))}
    if beam_size > 1:
        endpoints["decode_beam"] = (decode, decode_signature(batch_size * beam_size))
    return endpoints


def classifier_endpoints(
    model: SequenceClassifier | TokenClassifier, batch_size: int = 1
) -> Endpoints:
    """``classify`` (class logits ``[B, C]``) or ``tag`` (per-token logits ``[B, T, tags]``)."""
    model.ensure_built()
    name = "tag" if isinstance(model, TokenClassifier) else "classify"

    def run(token_ids):
        return {"logits": model(token_ids)}

    return {name: (run, [tf.TensorSpec((batch_size, model.sequence_length), tf.int32)])}


def language_model_endpoints(
    model: TransformerLanguageModel, prefill_length: int, batch_size: int = 1
) -> Endpoints:
    """``prefill`` (a prompt of ``prefill_length`` tokens from position 0) and ``decode``."""
    model.ensure_built()
    cache = tf.TensorSpec(model.init_cache(batch_size).shape, tf.float32)

    def prefill(tokens, cache):
        logits, cache = model.call_with_cache(tokens, cache, 0)
        return {"logits": logits, "cache": cache}

    def decode(token, cache, index):
        logits, cache = model.call_with_cache(token, cache, index)
        return {"logits": logits, "cache": cache}

    return {
        "prefill": (prefill, [tf.TensorSpec((batch_size, prefill_length), tf.int32), cache]),
        "decode": (
            decode,
            [tf.TensorSpec((batch_size, 1), tf.int32), cache, tf.TensorSpec((), tf.int32)],
        ),
    }


def export_saved_model(model: keras.Model, endpoints: Endpoints, directory: str | Path) -> Path:
    """A SavedModel with one signature per endpoint, sharing the model's variables."""
    directory = Path(directory)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=signature)
    shutil.rmtree(directory, ignore_errors=True)
    archive.write_out(str(directory), verbose=False)
    return directory


def _flex_ops(message: str) -> list[str]:
    return sorted(set(re.findall(r"Flex\w+|tf\.\w+", message)))


def convert_saved_model(
    directory: str | Path,
    signature_keys: Iterable[str],
    mode: str = "fp32",
    representative_dataset: Callable | None = None,
) -> bytes:
    """A .tflite flatbuffer with the given signatures, builtin ops only.

    Args:
        mode: ``"fp32"``; ``"float16"`` (weights stored as float16); ``"dynamic_int8"``
            (weights int8, activations float: dynamic-range quantization).
        representative_dataset: reserved for calibrated modes.
    """
    if mode not in MODES:
        raise ConversionError(f"unknown quantization mode {mode!r}; valid modes: {MODES}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(directory), signature_keys=list(signature_keys)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises its own error types with long logs
        text = str(error)
        ops = _flex_ops(text) if "Flex" in text or "TF Select" in text else []
        if ops:
            raise ConversionError(f"needs Flex (SELECT_TF_OPS) ops: {', '.join(ops)}") from None
        raise ConversionError(f"TFLite conversion failed: {text.strip().splitlines()[0]}") from None
    check_builtin_ops(flatbuffer)
    return flatbuffer


def op_names(flatbuffer: bytes) -> list[str]:
    """The distinct op names of a .tflite model (custom ops by their custom name)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=flatbuffer)
    except (RuntimeError, ValueError) as error:  # e.g. an op this runtime cannot resolve
        raise ConversionError(f"the runtime cannot load the model: {error}") from None
    # The interpreter lists its ops only through this private method (no public API yet).
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def check_builtin_ops(flatbuffer: bytes) -> None:
    """Raise ``ConversionError`` naming any Flex or custom op left in the model."""
    bad = [name for name in op_names(flatbuffer) if name.startswith("Flex") or name == "CUSTOM"]
    if bad:
        raise ConversionError(f"the converted model holds non-builtin ops: {', '.join(bad)}")


def convert(
    model: keras.Model, endpoints: Endpoints, mode: str = "fp32", workdir: str | Path | None = None
) -> bytes:
    """Export ``endpoints`` of ``model`` and convert them to one .tflite with shared weights."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = export_saved_model(model, endpoints, Path(workdir or scratch) / "saved_model")
        return convert_saved_model(saved, endpoints, mode)
