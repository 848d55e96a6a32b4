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

import contextlib
import inspect
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import keras
import tensorflow as tf

from keras_transformer.errors import InputProblem
from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
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
from keras_transformer_edge.modes import (
    CALIBRATED_MODES,
    CONVERTER_MODES,
    CONVERTIBLE_MODES,
    POST_QUANTIZED_MODES,
)
from keras_transformer_edge.runtime.signatures import (
    CACHE_ENTRIES,
    POSITION_SHAPE,
    SPLIT_CACHE,
    bucket_name,
    layer_name,
)
from keras_transformer_pipelines.tensorflow_logs import converter_output_filtered

Endpoints = dict[str, tuple[Callable, list[tf.TensorSpec]]]
# The modes the TFLite converter produces (modes.py defines every mode).
MODES = CONVERTER_MODES


# A decode step's cache position: shape [1], never rank 0 (runtime/signatures.py says why).
POSITION = tf.TensorSpec(POSITION_SHAPE, tf.int32)


def _position(index):
    """The position the layers take: a scalar from the exported ``[1]`` input; a
    ``decode_batch`` step's ``[rows]`` (one per row, format 6) as it is."""
    return tf.reshape(index, ()) if index.shape == POSITION.shape else index


class ConversionError(InputProblem):
    """A model that cannot be converted as asked; the message is one line and names the cause."""


def length_buckets(length: int) -> tuple[int, ...]:
    """The shorter lengths a sequence-length signature is also exported at (``encode_N``,
    ``prefill_N``): powers of two from 8 below ``length``. Most sentences of the gettext
    corpus are under 16 tokens; each bucket is one more subgraph sharing the weights."""
    return tuple(n for n in (8, 16, 32, 64, 128, 256) if n < length)


def decode_length_buckets(source: int, target: int) -> tuple[int, ...]:
    """The lengths a seq2seq decode step is also exported at (``decode_N``): the length
    buckets under both lengths, from 16 (or half the length, for a shorter model). A step
    reads N source and N cache positions; a translation moves on to the next bucket as it
    reaches N tokens, and one of 8 would move after 8 tokens, which most do."""
    shorter = min(source, target)
    return tuple(n for n in length_buckets(shorter) if n >= min(16, shorter // 2))


def seq2seq_endpoints(
    model: Seq2SeqTransformer,
    batch_size: int = 1,
    beam_size: int = 1,
    encode_lengths: Sequence[int] = (),
    batch_rows: int = 1,
    decode_lengths: Sequence[int] = (),
) -> Endpoints:
    """``encode`` and ``decode`` signatures with static shapes for ``batch_size`` rows.

    With ``beam_size > 1``, a ``decode_beam`` signature runs ``batch_size * beam_size`` rows,
    so the host's beam search advances every beam in one call (weights shared in the file).
    ``encode_lengths``: also ``encode_N`` for each shorter source length N (the runtime encodes
    a sentence with the shortest that holds it). ``batch_rows > 1``: a ``decode_batch``
    signature of that many rows, one sentence each at its own position (batch translation).
    ``decode_lengths``: each step signature also at ``{name}_N`` for sources of at most N
    tokens and the first N target positions (``runtime/signatures.py``).
    """
    model.ensure_built()
    source = tf.TensorSpec((batch_size, model.encoder_sequence_length), tf.int32)
    if not 1 <= batch_rows <= 64:
        raise ConversionError(f"batch rows must be in [1, 64], got {batch_rows}")
    for length in encode_lengths:
        if not 1 <= length < source.shape[1]:
            raise ConversionError(
                f"encode length bucket {length} must be in [1, {source.shape[1]})"
            )
    for length in decode_lengths:
        if not 1 <= length < min(source.shape[1], model.decoder_sequence_length):
            raise ConversionError(
                f"decode length bucket {length} must be in [1, "
                f"{min(source.shape[1], model.decoder_sequence_length)})"
            )
    layers = model.num_decoder_layers
    attention = model.decoder.layers[0].self_attention
    sizes = {
        "heads": attention.num_key_value_heads,
        "head_dim": attention.key_dim,
        "target": model.decoder_sequence_length,
        "source": source.shape[1],
    }
    cache_names = [layer_name(t, layer) for layer in range(layers) for t in SPLIT_CACHE]

    def encode(source_ids):
        output, mask = model.encode(source_ids)
        return {"cross_attention_cache": model.cross_attention_cache(output), "source_mask": mask}

    def decode(token, index, source_mask, **caches):
        per_layer = [
            tuple(caches[layer_name(template, layer)] for template in SPLIT_CACHE)
            for layer in range(layers)
        ]
        logits, entries = model.decode_step(token, per_layer, _position(index), source_mask)
        return {"logits": logits, CACHE_ENTRIES: entries}

    decode = _with_arguments(decode, ["token", "index", "source_mask", *cache_names])

    def decode_signature(
        rows: int, length: int | None = None, per_row: bool = False
    ) -> list[tf.TensorSpec]:
        dims = {**sizes, "rows": rows}
        if length is not None:  # a length bucket: N source and N target positions
            dims.update(source=length, target=length)
        caches = [
            tf.TensorSpec([dims[dim] for dim in SPLIT_CACHE[template][1]], tf.float32)
            for _ in range(layers)
            for template in SPLIT_CACHE
        ]
        return [
            tf.TensorSpec((rows, 1), tf.int32),
            tf.TensorSpec((rows,), tf.int32) if per_row else POSITION,
            tf.TensorSpec((rows, dims["source"]), tf.bool),
            *caches,
        ]

    endpoints = {"encode": (encode, [source])}
    for length in sorted(set(encode_lengths)):
        shorter = tf.TensorSpec((batch_size, length), tf.int32)
        endpoints[bucket_name("encode", length)] = (encode, [shorter])
    steps = {"decode": batch_size}
    if beam_size > 1:
        steps["decode_beam"] = batch_size * beam_size
    if batch_rows > 1:
        steps["decode_batch"] = batch_size * batch_rows
    for name, rows in steps.items():
        per_row = name == "decode_batch"  # each row its own sentence, at its own position
        endpoints[name] = (decode, decode_signature(rows, per_row=per_row))
        for length in sorted(set(decode_lengths)):
            signature = decode_signature(rows, length, per_row)
            endpoints[bucket_name(name, length)] = (decode, signature)
    return endpoints


def _with_arguments(function: Callable, names: list[str]) -> Callable:
    """``function(**named)`` callable with ``names`` as its positional arguments, in that
    order: an exported signature takes its input names from its function's arguments, and a
    decode step has a few per layer."""
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )

    def call(*args, **kwargs):
        return function(**signature.bind(*args, **kwargs).arguments)

    call.__signature__ = signature
    call.__name__ = function.__name__
    return call


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
    model: TransformerLanguageModel,
    prefill_length: int,
    batch_size: int = 1,
    prefill_lengths: Sequence[int] = (),
) -> Endpoints:
    """``prefill`` (a prompt of ``prefill_length`` tokens from position 0) and ``decode``;
    ``prefill_N`` for each shorter length N of ``prefill_lengths``."""
    model.ensure_built()
    cache = tf.TensorSpec(model.init_cache(batch_size).shape, tf.float32)

    def prefill(tokens, cache):
        logits, cache = model.call_with_cache(tokens, cache, 0)
        return {"logits": logits, "cache": cache}

    def decode(token, cache, index):
        logits, cache = model.call_with_cache(token, cache, _position(index))
        return {"logits": logits, "cache": cache}

    endpoints = {
        "prefill": (prefill, [tf.TensorSpec((batch_size, prefill_length), tf.int32), cache]),
        "decode": (
            decode,
            [tf.TensorSpec((batch_size, 1), tf.int32), cache, POSITION],
        ),
    }
    for length in sorted(set(prefill_lengths)):
        if not 1 <= length < prefill_length:
            raise ConversionError(
                f"prefill length bucket {length} must be in [1, {prefill_length})"
            )
        tokens = tf.TensorSpec((batch_size, length), tf.int32)
        endpoints[bucket_name("prefill", length)] = (prefill, [tokens, cache])
    return endpoints


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
