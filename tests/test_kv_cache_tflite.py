"""The KV-cache design converts: prefill and decode as TFLite signatures, builtin ops only.

Issue 4 builds the real exporter in edge/; this guards the layer design it relies on:
static cache shapes and a slice update at an index (DYNAMIC_UPDATE_SLICE), no Flex ops.
"""

import shutil

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel  # noqa: E402

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64, num_key_value_heads=2)


def _convert(tmp_path, model, endpoints):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=signature)
    shutil.rmtree(tmp_path / "saved", ignore_errors=True)
    archive.write_out(str(tmp_path / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(tmp_path / "saved"), signature_keys=list(endpoints)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # Flex is an error
    return litert.Interpreter(model_content=converter.convert())


def test_language_model_prefill_and_decode_signatures(tmp_path, rng):
    model = TransformerLanguageModel(50, 16, **SMALL)
    ids = rng.integers(3, 50, (1, 10)).astype("int32")
    full = np.asarray(model(ids))
    cache_spec = tf.TensorSpec(model.init_cache(1).shape, tf.float32)

    def prefill(tokens, cache):
        logits, cache = model.call_with_cache(tokens, cache, 0)
        return {"logits": logits, "cache": cache}

    def decode(token, cache, index):
        logits, cache = model.call_with_cache(token, cache, index)
        return {"logits": logits, "cache": cache}

    interpreter = _convert(
        tmp_path,
        model,
        {
            "prefill": (prefill, [tf.TensorSpec((1, 4), tf.int32), cache_spec]),
            "decode": (
                decode,
                [tf.TensorSpec((1, 1), tf.int32), cache_spec, tf.TensorSpec((), tf.int32)],
            ),
        },
    )
    out = interpreter.get_signature_runner("prefill")(
        tokens=ids[:, :4], cache=np.zeros(cache_spec.shape, "float32")
    )
    logits, cache = [out["logits"]], out["cache"]
    step = interpreter.get_signature_runner("decode")
    for index in range(4, 10):
        out = step(token=ids[:, index : index + 1], cache=cache, index=np.array(index, "int32"))
        logits.append(out["logits"])
        cache = out["cache"]
    np.testing.assert_allclose(np.concatenate(logits, 1), full, atol=1e-4)


def test_seq2seq_encode_and_decode_signatures(tmp_path, rng):
    model = Seq2SeqTransformer(40, 40, 8, 6, **SMALL)
    source = rng.integers(3, 40, (1, 8)).astype("int32")
    source[0, 6:] = 0
    target = rng.integers(3, 40, (1, 6)).astype("int32")
    full = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    encoder_output, _ = model.encode(source)
    cross_spec = tf.TensorSpec(model.cross_attention_cache(encoder_output).shape, tf.float32)
    cache_spec = tf.TensorSpec(model.init_cache(1).shape, tf.float32)

    def encode(source_ids):
        output, mask = model.encode(source_ids)
        return {"cross_attention_cache": model.cross_attention_cache(output), "source_mask": mask}

    def decode(token, cache, index, cross_attention_cache, source_mask):
        logits, cache = model.decode(token, cache, index, cross_attention_cache, source_mask)
        return {"logits": logits, "cache": cache}

    interpreter = _convert(
        tmp_path,
        model,
        {
            "encode": (encode, [tf.TensorSpec((1, 8), tf.int32)]),
            "decode": (
                decode,
                [
                    tf.TensorSpec((1, 1), tf.int32),
                    cache_spec,
                    tf.TensorSpec((), tf.int32),
                    cross_spec,
                    tf.TensorSpec((1, 8), tf.bool),
                ],
            ),
        },
    )
    encoded = interpreter.get_signature_runner("encode")(source_ids=source)
    step = interpreter.get_signature_runner("decode")
    cache, logits = np.zeros(cache_spec.shape, "float32"), []
    for index in range(6):
        out = step(
            token=target[:, index : index + 1],
            cache=cache,
            index=np.array(index, "int32"),
            cross_attention_cache=encoded["cross_attention_cache"],
            source_mask=encoded["source_mask"],
        )
        logits.append(out["logits"])
        cache = out["cache"]
    np.testing.assert_allclose(np.concatenate(logits, 1), full, atol=1e-4)
