"""Keras models to ONNX through tf2onnx, one static-shape .onnx file per signature, checked with
onnxruntime before anything is written.

ONNX has no multi-signature files, so the endpoints of ``convert.seq2seq_endpoints`` become
``encode.onnx`` and ``decode.onnx`` (and ``prefill.onnx``/``decode.onnx`` for a language model);
the host runs the generation loop, as with TFLite. Each file's inputs keep the endpoint's argument
names. ONNX forbids an output named like an input, so an output that shares its name with an input
(the KV ``cache``) is stored as ``cache_out``; :class:`OnnxSignature` maps it back, so that a host
loop reads the same names as with a TFLite signature runner.

Keras's TF backend writes ``ops.slice_update`` (the fixed-size KV cache) as
``XlaDynamicUpdateSlice``, which tf2onnx does not know; it is lowered here to a ``ScatterND``
with the same clamping rule. Exact GELU becomes ``Erfc``, also unknown to it: ``1 - Erf``.

Every conversion runs :func:`check_onnx_parity` on held-out inputs (max abs error against the
Keras endpoints, top-1 agreement of ``logits``) and raises :class:`ParityError`, leaving the
destination untouched, when outside its tolerance.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_transformer_edge.convert import ConversionError, Endpoints
from keras_transformer_edge.parity import ParityError  # the same error as the TFLite gate
from keras_transformer_edge.runners import endpoint_runner
from keras_transformer_edge.runtime.steps import (
    LanguageModelSteps,
    Recording,
    Seq2SeqSteps,
    teacher_forced_logits,
)

# tf2onnx 1.17 targets opsets up to 18 (its default is 15); 17 runs on every onnxruntime this
# project allows (>= 1.20).
DEFAULT_OPSET = 17
# Suffix of an output whose name an input already uses (ONNX value names are unique).
OUTPUT_SUFFIX = "_out"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Parity:
    """How close one signature's ONNX outputs came to the Keras endpoint's."""

    max_abs_error: float
    top1_agreement: float | None  # None: the signature has no ``logits`` output
    samples: int


@dataclass(frozen=True)
class OnnxExport:
    """The written files, by signature name, and the parity figures they passed."""

    paths: dict[str, Path]
    parity: dict[str, Parity]


def _argument_names(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _output_name(name: str, inputs: Sequence[str]) -> str:
    return name + OUTPUT_SUFFIX if name in inputs else name


def _dynamic_update_slice(ctx, node, name, args) -> None:
    """tf2onnx handler: ``XlaDynamicUpdateSlice(operand, update, start)`` as ``ScatterND``.

    Static shapes let the scatter indices be a constant grid plus the start vector. Only the
    leading axes up to the last one the update does not fully cover need indices, so a KV cache
    write indexes ``[batch, 2, heads, length]`` rows, not every element.
    """
    from onnx import TensorProto

    operand, update, start = node.input
    operand_shape, update_shape = ctx.get_shape(operand), ctx.get_shape(update)
    if not operand_shape or not update_shape or -1 in operand_shape + update_shape:
        raise ConversionError(f"XlaDynamicUpdateSlice {name} needs static shapes")
    covered = [u == o for u, o in zip(update_shape, operand_shape)]
    depth = max([0] + [axis + 1 for axis, full in enumerate(covered) if not full]) or 1

    def const(suffix: str, value: np.ndarray) -> str:
        return ctx.make_const(f"{name}/{suffix}", value.astype(np.int64)).output[0]

    start = ctx.make_node("Cast", [start], attr={"to": TensorProto.INT64}).output[0]
    # XLA clamps the start so that the update lies inside the operand; ScatterND would fail.
    limit = np.array(operand_shape) - np.array(update_shape)
    start = ctx.make_node("Min", [start, const("limit", limit)]).output[0]
    start = ctx.make_node("Max", [start, const("zero", np.zeros_like(limit))]).output[0]
    begin, end = const("begin", np.array([0])), const("end", np.array([depth]))
    start = ctx.make_node("Slice", [start, begin, end]).output[0]
    grid = np.stack(np.meshgrid(*map(np.arange, update_shape[:depth]), indexing="ij"), -1)
    indices = ctx.make_node("Add", [const("grid", grid), start]).output[0]
    node.type = "ScatterND"
    ctx.replace_inputs(node, [operand, indices, update])


def _erfc(ctx, node, name, args) -> None:
    """tf2onnx handler: ``Erfc(x)`` as ``1 - Erf(x)`` (exact GELU on the TF backend uses Erfc).

    Only erfc's relative precision far in the tail is lost: the absolute error stays at
    float32 rounding of erf (about 6e-8), which GELU scales by ``|x| / 2``.
    """
    from onnx import helper

    (value,) = node.input
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(value))
    erf = ctx.make_node("Erf", [value]).output[0]
    node.type = "Sub"
    ctx.replace_inputs(node, [ctx.make_const(name + "/one", np.array(1, dtype)).output[0], erf])


CUSTOM_OP_HANDLERS = {
    "XlaDynamicUpdateSlice": (_dynamic_update_slice, []),
    "Erfc": (_erfc, []),
}


@contextlib.contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    """tf2onnx logs every rewriter and unsupported op at length; the caller gets one line."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _check_onnx_model(proto, signature: str) -> None:
    """Reject ops with no ONNX schema (tf2onnx passes them through), and dynamic shapes."""
    import onnx

    unknown = sorted(
        {node.op_type for node in proto.graph.node if not onnx.defs.has(node.op_type, node.domain)}
    )
    if unknown:
        raise ConversionError(
            f"signature {signature!r} needs ops tf2onnx cannot convert: {', '.join(unknown)}"
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # onnx raises ValidationError/InferenceError with long logs
        raise ConversionError(
            f"signature {signature!r}: invalid ONNX: {_one_line(error)}"
        ) from None
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not dim.HasField("dim_value") for dim in dims):
            raise ConversionError(f"signature {signature!r}: {value.name!r} has a dynamic shape")


def signature_to_onnx(function, specs: Sequence[tf.TensorSpec], signature: str, opset: int):
    """One endpoint as an ``onnx.ModelProto``, inputs named after ``function``'s arguments."""
    import tf2onnx

    names = _argument_names(function)
    specs = [tf.TensorSpec(spec.shape, spec.dtype, name=n) for spec, n in zip(specs, names)]

    def renamed(*args):
        outputs = function(*args)
        return {_output_name(key, names): value for key, value in outputs.items()}

    try:
        with _quiet_tf2onnx():
            proto, _ = tf2onnx.convert.from_function(
                tf.function(renamed),
                input_signature=specs,
                opset=opset,
                custom_op_handlers=CUSTOM_OP_HANDLERS,
            )
    except Exception as error:  # tf2onnx raises assorted errors after pages of logs
        raise ConversionError(
            f"tf2onnx failed on signature {signature!r}: {_one_line(error)}"
        ) from None
    _check_onnx_model(proto, signature)
    return proto


class OnnxSignature:
    """An onnxruntime session called like a TFLite signature runner: keyword inputs, a dict of
    outputs under the endpoint's names (``cache_out`` read back as ``cache``)."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, all cores
        options.log_severity_level = 3  # errors only: it warns about unused initializers
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [value.name for value in self.session.get_inputs()]
        # File output name -> endpoint output name ("cache_out" -> "cache").
        self.outputs = {}
        for value in self.session.get_outputs():
            base = value.name.removesuffix(OUTPUT_SUFFIX)
            self.outputs[value.name] = base if base in self.inputs else value.name

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise ConversionError(f"missing inputs: {', '.join(missing)}")
        values = self.session.run(None, {name: np.asarray(feeds[name]) for name in self.inputs})
        return dict(zip(self.outputs.values(), values))


def _as_list(feeds: Feeds | Sequence[Feeds]) -> list[Feeds]:
    return [feeds] if isinstance(feeds, Mapping) else list(feeds)


def check_onnx_parity(
    endpoints: Endpoints,
    paths: Mapping[str, str | Path],
    inputs: Mapping[str, Feeds | Sequence[Feeds]],
    atol: float = 1e-4,
    min_top1: float = 1.0,
) -> dict[str, Parity]:
    """Run each .onnx file and its Keras endpoint on the same inputs and compare.

    Args:
        endpoints: the Keras endpoints the files were converted from (the reference).
        paths: signature name -> .onnx file.
        inputs: signature name -> one feed dict, or a list of them (e.g. every decode step).
            Every signature in ``paths`` needs at least one.
        atol: the largest allowed absolute difference over all float outputs. Integer and
            boolean outputs must be equal.
        min_top1: the smallest allowed fraction of positions whose ``logits`` argmax agrees.

    Returns:
        signature name -> :class:`Parity`.

    Raises:
        ParityError: one line naming the signature and the figure outside its tolerance.
    """
    report = {}
    for signature, path in paths.items():
        feeds = _as_list(inputs.get(signature, []))
        if not feeds:
            raise ParityError(f"no held-out inputs for signature {signature!r}")
        runner = OnnxSignature(path)
        function = endpoints[signature][0]
        error, agree, positions = 0.0, 0, 0
        for feed in feeds:
            expected = {k: keras.ops.convert_to_numpy(v) for k, v in function(**feed).items()}
            try:
                actual = runner(**feed)
            except Exception as failure:  # onnxruntime's errors carry the whole node dump
                raise ParityError(
                    f"onnxruntime failed on {signature!r}: {_one_line(failure)}"
                ) from None
            for name, want in expected.items():
                got = actual[name]
                if got.shape != want.shape:
                    raise ParityError(
                        f"{signature!r} output {name!r} has shape {got.shape}, not {want.shape}"
                    )
                if want.dtype.kind == "f":
                    error = max(error, float(np.max(np.abs(got - want), initial=0.0)))
                elif not np.array_equal(got, want):
                    raise ParityError(f"{signature!r} output {name!r} differs from Keras")
            if "logits" in expected:
                agree += int((actual["logits"].argmax(-1) == expected["logits"].argmax(-1)).sum())
                positions += expected["logits"][..., 0].size
        top1 = agree / positions if positions else None
        report[signature] = Parity(error, top1, len(feeds))
        if not error <= atol:  # also catches NaN
            raise ParityError(
                f"ONNX parity failed for {signature!r}: max abs error {error:.3g} > {atol:.3g}"
            )
        if top1 is not None and top1 < min_top1:
            raise ParityError(
                f"ONNX parity failed for {signature!r}: top-1 agreement {top1:.1%} < {min_top1:.1%}"
            )
    return report


def _destinations(path_or_dir: str | Path, signatures: Sequence[str]) -> dict[str, Path]:
    """``dir/<signature>.onnx``; a path ending in .onnx names the file of a single signature,
    or is the stem of ``<stem>.<signature>.onnx`` files for several."""
    target = Path(path_or_dir)
    if target.suffix != ".onnx":
        return {name: target / f"{name}.onnx" for name in signatures}
    if len(signatures) == 1:
        return {signatures[0]: target}
    return {name: target.with_name(f"{target.stem}.{name}.onnx") for name in signatures}


def to_onnx(
    model: keras.Model,
    endpoints: Endpoints,
    path_or_dir: str | Path,
    inputs: Mapping[str, Feeds | Sequence[Feeds]],
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    min_top1: float = 1.0,
) -> OnnxExport:
    """Convert each endpoint of ``model`` to its own static-shape .onnx file, parity-checked.

    Files are written to a temporary folder beside the destination and moved into place only
    once every signature has passed :func:`check_onnx_parity` on ``inputs``; a failure leaves the
    destination as it was.

    Args:
        model: the Keras model the endpoints call (its name labels errors).
        endpoints: ``convert.seq2seq_endpoints`` or ``convert.language_model_endpoints`` output.
        path_or_dir: a folder for ``<signature>.onnx`` files, or a ``.onnx`` path (see
            :func:`_destinations`).
        inputs: held-out inputs by signature; :func:`seq2seq_parity_inputs` and
            :func:`language_model_parity_inputs` build realistic ones.
        opset: the ONNX opset to target.
        atol, min_top1: parity tolerances, as in :func:`check_onnx_parity`.

    Raises:
        ConversionError: an op or shape ONNX cannot take (one line naming it).
        ParityError: outputs outside the tolerance.
    """
    destinations = _destinations(path_or_dir, list(endpoints))
    parent = next(iter(destinations.values())).parent
    # The staging folder sits beside the destination so the final move is a rename.
    staging_root = parent if parent.exists() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=staging_root) as staging:
        staged = {}
        for name, (function, specs) in endpoints.items():
            try:
                proto = signature_to_onnx(function, specs, name, opset)
            except ConversionError as error:
                raise ConversionError(f"model {model.name!r}: {error}") from None
            staged[name] = Path(staging) / f"{name}.onnx"
            staged[name].write_bytes(proto.SerializeToString())
        parity = check_onnx_parity(endpoints, staged, inputs, atol=atol, min_top1=min_top1)
        for name, destination in destinations.items():
            destination.parent.mkdir(parents=True, exist_ok=True)
            # os.replace is atomic on one filesystem; shutil.move copies across filesystems.
            if staging_root == destination.parent:
                os.replace(staged[name], destination)
            else:
                shutil.move(staged[name], destination)
    return OnnxExport(destinations, parity)


def seq2seq_parity_inputs(
    endpoints: Endpoints, source_ids: np.ndarray, target_ids: np.ndarray
) -> dict[str, list[Feeds]]:
    """Held-out feeds for ``encode``/``decode``: the source, then every teacher-forced decode step
    with the cache the Keras model itself produced (so late steps see a filled cache)."""
    recorder = Recording(endpoint_runner(endpoints))
    steps = Seq2SeqSteps(recorder, np.asarray(source_ids, np.int32))
    teacher_forced_logits(steps, [int(token) for token in np.asarray(target_ids)[0]])
    return recorder.samples


def language_model_parity_inputs(
    endpoints: Endpoints, token_ids: np.ndarray
) -> dict[str, list[Feeds]]:
    """Held-out feeds for ``prefill`` (the first ``prefill_length`` tokens of ``token_ids``) and
    one ``decode`` step per remaining token, with the cache the Keras model produced."""
    recorder = Recording(endpoint_runner(endpoints))
    LanguageModelSteps(recorder).prefill(np.asarray(token_ids, np.int32)[0])
    return recorder.samples
