"""KV-cache generation converts: prefill/encode and decode as TFLite signatures of one file,
builtin ops only, matching the Keras model; quantized modes shrink the file; Flex is an error."""

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from keras_transformer.models import (  # noqa: E402
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge.convert import (  # noqa: E402
    ConversionError,
    classifier_endpoints,
    convert,
    language_model_endpoints,
    op_names,
    seq2seq_endpoints,
)
from keras_transformer_edge.runners import lite_model  # noqa: E402
from keras_transformer_edge.runtime.signatures import position  # noqa: E402
from keras_transformer_edge.runtime.steps import (  # noqa: E402
    Seq2SeqSteps,
    teacher_forced_logits,
)

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64, num_key_value_heads=2)


def test_language_model_prefill_and_decode_signatures(rng):
    model = TransformerLanguageModel(50, 16, **SMALL)
    ids = rng.integers(3, 50, (1, 10)).astype("int32")
    full = np.asarray(model(ids))
    flatbuffer = convert(model, language_model_endpoints(model, prefill_length=4))
    interpreter = litert.Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == {"prefill", "decode"}
    cache = np.zeros(model.init_cache(1).shape, "float32")
    out = interpreter.get_signature_runner("prefill")(tokens=ids[:, :4], cache=cache)
    logits, cache = [out["logits"]], out["cache"]
    step = interpreter.get_signature_runner("decode")
    for index in range(4, 10):
        out = step(token=ids[:, index : index + 1], cache=cache, index=position(index))
        logits.append(out["logits"])
        cache = out["cache"]
    np.testing.assert_allclose(np.concatenate(logits, 1), full, atol=1e-4)
    assert "DYNAMIC_UPDATE_SLICE" in op_names(flatbuffer)


def _split_caches(encoded, layers, rows, target_length):
    """The decode inputs of format 4, by hand from the contract (signatures.py): per layer
    keys [rows, H, T, D] and value-major values [rows, H, D, T], self and cross."""
    cross = np.repeat(encoded["cross_attention_cache"], rows, axis=0)
    heads, depth = cross.shape[3], cross.shape[5]
    caches = {}
    for layer in range(layers):
        caches[f"self_keys_{layer}"] = np.zeros((rows, heads, target_length, depth), "float32")
        caches[f"self_values_{layer}"] = np.zeros((rows, heads, depth, target_length), "float32")
        caches[f"cross_keys_{layer}"] = np.ascontiguousarray(cross[:, layer, 0])
        caches[f"cross_values_{layer}"] = np.ascontiguousarray(cross[:, layer, 1].swapaxes(2, 3))
    return caches


def _store(caches, entries, index):
    """A step's ``cache_entries`` [rows, L, 2, H, D] written at ``index``."""
    for layer in range(entries.shape[1]):
        caches[f"self_keys_{layer}"][:, :, index] = entries[:, layer, 0]
        caches[f"self_values_{layer}"][:, :, :, index] = entries[:, layer, 1]


def _seq2seq_logits(flatbuffer, model, source, target):
    interpreter = litert.Interpreter(model_content=flatbuffer)
    encoded = interpreter.get_signature_runner("encode")(source_ids=source)
    step = interpreter.get_signature_runner("decode")
    caches = _split_caches(encoded, model.num_decoder_layers, 1, model.decoder_sequence_length)
    logits = []
    for index in range(target.shape[1]):
        out = step(
            token=target[:, index : index + 1],
            index=position(index),
            source_mask=encoded["source_mask"],
            **caches,
        )
        logits.append(out["logits"])
        _store(caches, out["cache_entries"], index)
    return np.concatenate(logits, 1)


def test_seq2seq_encode_and_decode_signatures_in_every_mode(rng):
    # Weights dominate the file at this size, as in real models.
    model = Seq2SeqTransformer(1000, 1000, 8, 6, **dict(SMALL, hidden_dim=64, intermediate_dim=256))
    source = rng.integers(3, 1000, (1, 8)).astype("int32")
    source[0, 6:] = 0
    target = rng.integers(3, 1000, (1, 6)).astype("int32")
    full = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    endpoints = seq2seq_endpoints(model)
    sizes = {}
    for mode, tolerance in (("fp32", 1e-4), ("float16", 2e-2), ("dynamic_int8", 0.15)):
        flatbuffer = convert(model, endpoints, mode)
        sizes[mode] = len(flatbuffer)
        logits = _seq2seq_logits(flatbuffer, model, source, target)
        np.testing.assert_allclose(logits, full, atol=tolerance, err_msg=mode)
        assert (logits.argmax(-1) == full.argmax(-1)).mean() >= 0.8, mode
    assert sizes["float16"] < 0.6 * sizes["fp32"]
    assert sizes["dynamic_int8"] < 0.4 * sizes["fp32"]


def test_an_op_without_a_builtin_kernel_is_a_one_line_error():
    inputs = keras.Input((3, 3))
    outputs = keras.layers.Lambda(lambda x: tf.linalg.det(x))(inputs)
    model = keras.Model(inputs, outputs)
    endpoints = {"serve": (lambda x: model(x), [tf.TensorSpec((1, 3, 3), tf.float32)])}
    with pytest.raises(ConversionError) as error:
        convert(model, endpoints)
    assert "\n" not in str(error.value)
    assert "MatrixDeterminant" in str(error.value) or "Flex" in str(error.value)
    with pytest.raises(ConversionError, match="unknown quantization mode"):
        convert(model, endpoints, mode="int3")


def test_beam_signature_advances_every_beam_as_the_single_row_signature_does(rng):
    model = Seq2SeqTransformer(100, 100, 8, 6, **SMALL)
    source = rng.integers(3, 100, (1, 8)).astype("int32")
    interpreter = litert.Interpreter(model_content=convert(model, seq2seq_endpoints(model, 1, 3)))
    assert set(interpreter.get_signature_list()) == {"encode", "decode", "decode_beam"}
    encoded = interpreter.get_signature_runner("encode")(source_ids=source)
    tokens = np.array([[1], [5], [9]], "int32")
    layers, length = model.num_decoder_layers, model.decoder_sequence_length
    beam = interpreter.get_signature_runner("decode_beam")(
        token=tokens,
        index=position(0),
        source_mask=np.repeat(encoded["source_mask"], 3, axis=0),
        **_split_caches(encoded, layers, 3, length),
    )
    single = interpreter.get_signature_runner("decode")
    for row in range(3):
        out = single(
            token=tokens[row : row + 1],
            index=position(0),
            source_mask=encoded["source_mask"],
            **_split_caches(encoded, layers, 1, length),
        )
        np.testing.assert_allclose(beam["logits"][row], out["logits"][0], atol=1e-5)
        np.testing.assert_allclose(beam["cache_entries"][row], out["cache_entries"][0], atol=1e-5)


@pytest.mark.parametrize("model_class", [SequenceClassifier, TokenClassifier])
def test_classifier_and_tagger_signatures_match_keras(model_class, rng):
    model = model_class(100, 12, 3, **SMALL)
    ids = rng.integers(3, 100, (1, 12)).astype("int32")
    ids[0, 9:] = 0
    endpoints = classifier_endpoints(model)
    name = "tag" if model_class is TokenClassifier else "classify"
    assert set(endpoints) == {name}
    runner = litert.Interpreter(model_content=convert(model, endpoints)).get_signature_runner(name)
    np.testing.assert_allclose(runner(token_ids=ids)["logits"], np.asarray(model(ids)), atol=1e-4)


def test_the_runtime_still_drives_a_packed_cache_decode_of_format_3(rng):
    # Bundles of format versions 1 to 3 carry one packed cache in and out of decode.
    model = Seq2SeqTransformer(100, 100, 8, 6, **SMALL)
    source = rng.integers(3, 100, (1, 8)).astype("int32")
    target = rng.integers(3, 100, 6).astype("int32")
    endpoints = seq2seq_endpoints(model)
    cross = endpoints["encode"][0](source)["cross_attention_cache"]

    def packed_decode(token, cache, index, cross_attention_cache, source_mask):
        logits, cache = model.decode(
            token, cache, tf.reshape(index, ()), cross_attention_cache, source_mask
        )
        return {"logits": logits, "cache": cache}

    specs = [
        tf.TensorSpec((1, 1), tf.int32),
        tf.TensorSpec(model.init_cache(1).shape, tf.float32),
        tf.TensorSpec((1,), tf.int32),
        tf.TensorSpec(cross.shape, tf.float32),
        tf.TensorSpec((1, 8), tf.bool),
    ]
    packed = {"encode": endpoints["encode"], "decode": (packed_decode, specs)}
    expected = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target[None]}))
    for flatbuffer in (convert(model, packed), convert(model, endpoints)):
        with lite_model(flatbuffer) as lite, lite.reserved() as reserved:
            for runner in (lite, reserved):  # copied in and out, and bound in place
                logits = teacher_forced_logits(Seq2SeqSteps(runner, source), target)
                np.testing.assert_allclose(logits, expected[0], atol=1e-4)
