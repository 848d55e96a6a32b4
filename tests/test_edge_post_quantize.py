"""int4 modes through ai-edge-quantizer: embeddings exported as lookups it covers, every weight of
a matmul or embedding stored in int4 (one tensor for the tied table and output head), outputs
close to float, and parity-gated bundles that translate."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from edge_runs import toy_translation_run  # noqa: E402

pytest.importorskip("ai_edge_quantizer")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from keras_transformer.models import Seq2SeqTransformer  # noqa: E402
from keras_transformer_edge import post_quantize  # noqa: E402
from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.convert import convert, op_names, seq2seq_endpoints  # noqa: E402
from keras_transformer_edge.runners import lite_model  # noqa: E402
from keras_transformer_edge.runtime.steps import Seq2SeqSteps  # noqa: E402
from keras_transformer_edge.runtime.translator import Translator  # noqa: E402

INT4 = schema.TensorType.INT4
INT8 = schema.TensorType.INT8
FLOAT32 = schema.TensorType.FLOAT32


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = Seq2SeqTransformer(
        300, 300, 12, 12, num_encoder_layers=1, num_decoder_layers=1, hidden_dim=64,
        num_heads=4, intermediate_dim=128, normalize_first=True, tie_output_embeddings=True,
    )  # fmt: skip
    model.ensure_built()
    return model


def _weights(flatbuffer: bytes) -> dict[int, tuple[int, tuple, set]]:
    """Constant tensors of at least 1,000 elements: buffer -> (type, shape, op names using it)."""
    root = schema.Model.GetRootAs(flatbuffer, 0)
    codes = [root.OperatorCodes(i).BuiltinCode() for i in range(root.OperatorCodesLength())]
    names = {value: name for name, value in vars(schema.BuiltinOperator).items()}
    found: dict[int, tuple[int, tuple, set]] = {}
    for g in range(root.SubgraphsLength()):
        graph = root.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            for position in range(op.InputsLength()):
                index = op.Inputs(position)
                if index < 0:
                    continue
                tensor = graph.Tensors(index)
                data = root.Buffers(tensor.Buffer())
                if (data.DataLength() or data.Size()) and np.prod(tensor.ShapeAsNumpy()) >= 1000:
                    entry = found.setdefault(
                        tensor.Buffer(), (tensor.Type(), tuple(tensor.ShapeAsNumpy()), set())
                    )
                    entry[2].add(names[codes[op.OpcodeIndex()]])
    return found


def test_embeddings_export_as_lookups_with_the_same_outputs(model):
    endpoints = seq2seq_endpoints(model)
    plain = convert(model, endpoints, "fp32")
    with post_quantize.embedding_lookups(model):
        looked_up = convert(model, endpoints, "fp32")
    assert "GATHER" in op_names(plain) and "GATHER" not in op_names(looked_up)
    assert "EMBEDDING_LOOKUP" in op_names(looked_up)
    # Outside the context the Keras model is itself again.
    assert "call" not in vars(model.decoder_embedding.token_embedding)
    ids = np.array([[5, 17, 299, 3, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    with lite_model(plain) as a, lite_model(looked_up) as b:
        np.testing.assert_allclose(
            a.run("encode", source_ids=ids)["cross_attention_cache"],
            b.run("encode", source_ids=ids)["cross_attention_cache"],
            atol=1e-5,
        )


@pytest.mark.parametrize("mode, int8", [("int4", 0), ("int4_blockwise", 0), ("int4_mixed", 2)])
def test_int4_modes_store_every_matmul_and_embedding_weight_in_int4(model, mode, int8):
    endpoints = seq2seq_endpoints(model, encode_lengths=(8,), batch_rows=2)
    float_model = convert(model, endpoints, "fp32")
    quantized = convert(model, endpoints, mode)
    weights = _weights(quantized)
    kinds = collections.Counter(dtype for dtype, _, _ in weights.values())
    # 2 embeddings + 2+5 attention kernels + 4 feed-forward kernels; the tied output head
    # reads the target table: one int4 tensor for both ops. int4_mixed keeps the encoder's
    # two feed-forward kernels in int8 (the decoder's, of the same shapes, stay int4).
    assert kinds[INT4] == 2 + 7 + 4 - int8 and kinds[INT8] == int8, weights
    feed_forward = {(128, 64), (64, 128)}
    int8_weights = [(shape, ops) for dtype, shape, ops in weights.values() if dtype == INT8]
    assert all(shape in feed_forward and ops == {"FULLY_CONNECTED"} for shape, ops in int8_weights)
    assert kinds[FLOAT32] <= 1  # at most the position table, which no matmul reads
    shared = [ops for dtype, shape, ops in weights.values() if shape == (300, 64)]
    assert {"EMBEDDING_LOOKUP", "FULLY_CONNECTED"} in shared
    assert len(quantized) < 0.4 * len(float_model)  # graph overhead weighs on a toy model
    # Every signature runs; int4 logits stay near the float ones.
    token = np.array([[1]], np.int32)
    ids = np.array([[5, 17, 299, 3, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    with lite_model(float_model) as reference, lite_model(quantized) as candidate:
        assert set(candidate.signatures) == set(reference.signatures)
        outputs = []
        for runner in (reference, candidate):
            outputs.append(Seq2SeqSteps(runner, ids).feed(token[0], 0))
    difference = np.abs(outputs[0] - outputs[1]).max()
    assert 0 < difference < 0.25 * np.abs(outputs[0]).max()


def test_inline_buffers_keeps_the_weights_inside_the_flatbuffer():
    # ai-edge-quantizer stores weights past the table once they pack to 256 KiB or more.
    model = Seq2SeqTransformer(
        3000, 3000, 12, 12, num_encoder_layers=1, num_decoder_layers=1, hidden_dim=128,
        num_heads=4, intermediate_dim=256, normalize_first=True, tie_output_embeddings=True,
    )  # fmt: skip
    endpoints = seq2seq_endpoints(model)
    with post_quantize.embedding_lookups(model):
        float_model = convert(model, endpoints, "fp32")
    _, raw = post_quantize._quantized(float_model, post_quantize._recipe("int4"))
    raw = bytes(raw.quantized_model)
    root = schema.Model.GetRootAs(raw, 0)
    external = [root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength())]
    assert any(external)  # what ai-edge-quantizer writes: weights past the table
    inline = post_quantize.inline_buffers(raw)
    root = schema.Model.GetRootAs(inline, 0)
    assert not any(root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength()))
    assert post_quantize.inline_buffers(inline) == inline
    with lite_model(raw) as a, lite_model(inline) as b:
        ids = np.array([[5, 17, 2999, 3, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
        np.testing.assert_array_equal(
            a.run("encode", source_ids=ids)["cross_attention_cache"],
            b.run("encode", source_ids=ids)["cross_attention_cache"],
        )


def test_an_int4_bundle_passes_its_gate_and_translates(tmp_path):
    keras.utils.set_random_seed(0)
    run = toy_translation_run(tmp_path)
    bundle = bundle_from_run(run, tmp_path / "int4", "int4_blockwise")
    translator = Translator.from_bundle(bundle, num_threads=1)
    parity = translator.bundle.manifest["extra"]["parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.85
    texts = ["blue window", "the cat opens the door", "moon"]
    assert translator.translate_many(texts) == [translator.translate(text) for text in texts]
    assert all(translator.translate_many(texts))


def test_tensor_errors_rank_the_quantizers_own_comparison_of_activations(model):
    from keras_transformer_edge.calibration import seq2seq_samples

    endpoints = seq2seq_endpoints(model)
    with post_quantize.embedding_lookups(model):
        float_model = convert(model, endpoints, "fp32")
    rng = np.random.default_rng(0)
    sources = np.zeros((4, 12), np.int32)
    sources[:, :7] = rng.integers(3, 300, (4, 7))
    targets = np.zeros((4, 12), np.int32)
    targets[:, 0], targets[:, 1:6] = 1, rng.integers(3, 300, (4, 5))
    batch = {"encoder_token_ids": sources, "decoder_token_ids": targets}
    samples = seq2seq_samples(float_model, [batch], limit=4)
    for mode in ("int4", "int4_blockwise"):
        errors = post_quantize.tensor_errors(float_model, mode, samples, limit=4)
        relative = [error.relative_error for error in errors]
        assert relative == sorted(relative, reverse=True)
        assert {error.signature for error in errors} == {"encode", "decode"}
        assert all(e.rmse_over_scale is None and e.max_abs_error is None for e in errors)
        # Every activation keeps most of its signal; the worst output (the encoder's memory,
        # the logits, the new cache entries) loses a few percent to 4-bit weights.
        assert all(0.0 <= value < 0.5 for value in relative), errors[:3]
        outputs = [e.relative_error for e in errors if "StatefulPartitionedCall" in e.tensor]
        assert 0.01 < max(outputs) < 0.5, outputs
