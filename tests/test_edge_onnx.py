"""ONNX export: one static-shape file per signature, driven step by step through onnxruntime,
matching the Keras model's full forward; a parity failure or an unconvertible op is a one-line
error that leaves nothing on disk."""

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel  # noqa: E402
from keras_transformer_edge.convert import (  # noqa: E402
    ConversionError,
    language_model_endpoints,
    seq2seq_endpoints,
)
from keras_transformer_edge.onnx_export import (  # noqa: E402
    OnnxSignature,
    ParityError,
    check_onnx_parity,
    language_model_parity_inputs,
    seq2seq_parity_inputs,
    signature_to_onnx,
    to_onnx,
)
from keras_transformer_edge.runners import FunctionRunner, endpoint_runner  # noqa: E402
from keras_transformer_edge.runtime.signatures import position  # noqa: E402
from keras_transformer_edge.runtime.steps import Seq2SeqSteps  # noqa: E402

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64)


def _static_shapes(path):
    graph = onnx.load(path).graph
    return all(
        dim.HasField("dim_value")
        for value in list(graph.input) + list(graph.output)
        for dim in value.type.tensor_type.shape.dim
    )


def test_seq2seq_greedy_decode_through_onnx_matches_the_keras_forward(rng, tmp_path):
    model = Seq2SeqTransformer(200, 200, 8, 6, **SMALL)
    source = rng.integers(3, 200, (1, 8)).astype("int32")
    source[0, 6:] = 0
    endpoints = seq2seq_endpoints(model)
    held_out = seq2seq_parity_inputs(endpoints, source, rng.integers(3, 200, (1, 6)))
    export = to_onnx(model, endpoints, tmp_path / "onnx", held_out)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["decode.onnx", "encode.onnx"]
    assert all(_static_shapes(path) for path in export.paths.values())
    assert export.parity["decode"].max_abs_error < 1e-4
    assert export.parity["decode"].top1_agreement == 1.0

    # Greedy generation on the host, one decode.onnx call per token, through the runtime's
    # own step driver (it keeps the per-layer caches and writes each step's new entries).
    sessions = {name: OnnxSignature(path) for name, path in export.paths.items()}
    runner = FunctionRunner(
        lambda name, inputs: sessions[name](**inputs), endpoint_runner(endpoints).specs
    )
    steps = Seq2SeqSteps(runner, source, bucketed=False)
    tokens, logits = [1], []
    for index in range(6):
        logits.append(steps.feed(np.array(tokens[-1:], "int32"), index))
        tokens.append(int(logits[-1][0].argmax()))
    target = np.array([tokens[:-1]], "int32")
    full = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    np.testing.assert_allclose(np.stack(logits, 1), full, atol=1e-4)


def test_language_model_prefill_and_decode_files_match_the_keras_forward(rng, tmp_path):
    # Exact GELU lowers to Erfc on the TF backend, which tf2onnx alone cannot convert.
    model = TransformerLanguageModel(50, 16, **SMALL, num_key_value_heads=2)
    ids = rng.integers(3, 50, (1, 10)).astype("int32")
    endpoints = language_model_endpoints(model, prefill_length=4)
    held_out = language_model_parity_inputs(endpoints, ids)
    export = to_onnx(model, endpoints, tmp_path / "lm.onnx", held_out)
    assert set(export.paths) == {"prefill", "decode"}
    assert export.paths["decode"].name == "lm.decode.onnx"
    prefill, step = OnnxSignature(export.paths["prefill"]), OnnxSignature(export.paths["decode"])
    out = prefill(tokens=ids[:, :4], cache=np.zeros(model.init_cache(1).shape, "float32"))
    logits, cache = [out["logits"]], out["cache"]
    for index in range(4, 10):
        out = step(token=ids[:, index : index + 1], cache=cache, index=position(index))
        logits.append(out["logits"])
        cache = out["cache"]
    np.testing.assert_allclose(np.concatenate(logits, 1), np.asarray(model(ids)), atol=1e-4)


def _miscompiled(scale):
    # The traced graph (what tf2onnx converts) differs from the eager reference, as a converter
    # bug would: a deterministic parity failure without touching any weights.
    def serve(x):
        return {"logits": x * (1.0 if tf.executing_eagerly() else scale)}

    return {"serve": (serve, [tf.TensorSpec((1, 2, 5), tf.float32)])}


def test_a_parity_failure_raises_one_line_and_writes_nothing(rng, tmp_path):
    held_out = {"serve": {"x": rng.normal(size=(1, 2, 5)).astype("float32")}}
    model = keras.Sequential(name="toy")
    with pytest.raises(ParityError, match="max abs error") as error:
        to_onnx(model, _miscompiled(1.5), tmp_path / "out", held_out)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
    # An existing export stays as it was, and no staging folder is left beside it.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "serve.onnx").write_bytes(b"previous")
    with pytest.raises(ParityError, match="top-1 agreement 0.0%"):
        to_onnx(model, _miscompiled(-1.0), tmp_path / "out", held_out, atol=np.inf)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["serve.onnx"]
    assert (tmp_path / "out" / "serve.onnx").read_bytes() == b"previous"
    # The same files pass with an honest graph; held-out inputs are required.
    export = to_onnx(model, _miscompiled(1.0), tmp_path / "out", held_out, atol=0.0)
    assert export.parity["serve"].max_abs_error == 0.0
    with pytest.raises(ParityError, match="no held-out inputs"):
        check_onnx_parity(_miscompiled(1.0), export.paths, {})


def test_an_op_without_an_onnx_conversion_is_a_one_line_error():
    spec = [tf.TensorSpec((1, 3), tf.float32)]
    with pytest.raises(ConversionError) as error:
        signature_to_onnx(lambda x: {"y": tf.math.lgamma(x)}, spec, "serve", opset=17)
    assert "\n" not in str(error.value)
    assert "Lgamma" in str(error.value)
