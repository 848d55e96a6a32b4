"""Every private API the project reaches is still there and still does what we rely on; these
fail loudly when an upgrade of Keras, TensorFlow, tensorflow-model-optimization or Python moves
it. One door per package: ``keras_transformer.private_api``, ``keras_transformer_pipelines.
private_api``, ``keras_transformer_edge.private_api`` (the device runtime's own door,
``runtime/litert_private.py``, has ``test_edge_private_api.py``).
"""

from __future__ import annotations

import gettext
import io
import struct

import keras
import numpy as np
import pytest

from keras_transformer import private_api as core
from keras_transformer.layers import MultiHeadAttention
from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models import Seq2SeqTransformer

tf = pytest.importorskip("tensorflow")

from keras_transformer_edge import private_api as edge  # noqa: E402
from keras_transformer_pipelines import private_api as pipelines  # noqa: E402

# --- keras_transformer ---------------------------------------------------------------------


def test_keras_masks_are_read_and_attached():
    ids = np.array([[3, 4, 0, 0]], "int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(ids)
    np.testing.assert_array_equal(np.asarray(core.keras_mask(embedded)), ids != 0)
    loss = tf.ones((1, 4))
    pipelines.set_keras_mask(loss, tf.constant([[True, False, True, False]]))
    np.testing.assert_array_equal(np.asarray(core.keras_mask(loss)), [[1, 0, 1, 0]])


def test_nested_layers_reach_the_attention_inside_the_stacks():
    options = dict(num_encoder_layers=2, num_decoder_layers=3, num_heads=2, intermediate_dim=32)
    model = Seq2SeqTransformer(50, 50, 8, 8, hidden_dim=16, **options)
    model.ensure_built()
    layers = list(core.nested_layers(model))
    assert layers[0] is model
    attention = [layer for layer in layers if isinstance(layer, MultiHeadAttention)]
    assert len(attention) == 2 + 3 * 2  # encoder self; decoder self and cross, per layer


def test_argument_errors_stay_one_line_inside_a_keras_call():
    assert getattr(ArgumentError, core.CALL_INFO_INJECTED) is True

    class Refuses(keras.layers.Layer):
        def call(self, x):
            raise ArgumentError("Refuses: `x` must be something else")

    with pytest.raises(ArgumentError) as error:
        Refuses()(np.zeros((1, 2), "float32"))
    assert str(error.value) == "Refuses: `x` must be something else"


# --- keras_transformer_pipelines -------------------------------------------------------------


def test_loss_scaling_for_distribution_round_trips():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        scaled = pipelines.scale_loss_for_distribution(tf.constant(6.0))
        assert float(pipelines.unscale_loss_for_distribution(scaled)) == pytest.approx(6.0)


def test_the_trainer_build_hooks_exist_where_distribution_replaces_them():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    assert callable(model._maybe_symbolic_build) and callable(model._symbolic_build)
    assert hasattr(model, "_distribute_strategy")
    pipelines.trainer_strategy(model)  # reads without error (None outside a strategy)
    built = []
    pipelines.replace_symbolic_build(model, lambda self, **_: built.append(self))
    model._maybe_symbolic_build()
    assert built == [model]


def _mo_file(entries: dict[str, str]) -> bytes:
    """A GNU .mo catalog (the format gettext reads), written by hand."""
    keys = sorted(entries)
    ids = [key.encode() for key in keys]
    strs = [entries[key].encode() for key in keys]
    header = 7 * 4
    originals = header
    translations = originals + 8 * len(keys)
    data = translations + 8 * len(keys)
    table, blob = [], b""
    for text in ids + strs:
        table.append((len(text), data + len(blob)))
        blob += text + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, len(keys), originals, translations, 0, 0)
    out += b"".join(struct.pack("<2I", *pair) for pair in table)
    return out + blob


def test_gettext_catalog_entries_are_all_listed():
    catalog = gettext.GNUTranslations(io.BytesIO(_mo_file({"Open": "Ouvrir", "Close": "Fermer"})))
    assert pipelines.gettext_entries(catalog) == {"Open": "Ouvrir", "Close": "Fermer"}


# --- keras_transformer_edge ----------------------------------------------------------------


def _dense_flatbuffer(per_tensor: bool) -> bytes:
    # Big enough to be quantized (the converter leaves weights under 1,024 values in float).
    kernel = tf.constant(np.random.default_rng(0).normal(size=(64, 32)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((1, 64))])
    def serve(x):
        return {"y": tf.matmul(x, kernel)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if per_tensor:
        edge.per_tensor_dense_weights(converter)
    return converter.convert()


def _weight_scales(flatbuffer: bytes) -> list[int]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    return [
        len(detail["quantization_parameters"]["scales"])
        for detail in interpreter.get_tensor_details()
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 2
    ]


def test_the_converter_switch_for_per_tensor_dense_weights_still_works():
    assert _weight_scales(_dense_flatbuffer(per_tensor=False)) == [32]  # per channel
    assert _weight_scales(_dense_flatbuffer(per_tensor=True)) == [1]


def test_op_details_list_a_models_ops():
    from ai_edge_litert.interpreter import Interpreter

    ops = edge.op_details(Interpreter(model_content=_dense_flatbuffer(True)))
    assert {"FULLY_CONNECTED"} <= {op["op_name"] for op in ops}
    assert all({"inputs", "outputs"} <= set(op) for op in ops)


def test_the_quantization_debugger_takes_ordered_samples():
    kernel = tf.constant(np.random.default_rng(1).normal(size=(4, 3)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((1, 4))])
    def serve(x):
        return {"y": tf.matmul(x, kernel)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = [np.ones((1, 4), np.float32)] * 4
    converter.representative_dataset = lambda: ([sample] for sample in samples)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([sample] for sample in samples)
    )
    seen = []

    def make(interpreter):
        seen.append(interpreter.get_input_details()[0]["shape"].tolist())
        return lambda: ([sample] for sample in samples)

    edge.set_debugger_samples(debugger, make)
    assert seen == [[1, 4]]
    assert len(list(edge.debugger_samples(debugger)())) == 4
    debugger.run()  # the debugger runs on what it was given


def test_keras_variables_expose_their_tf_variable():
    variable = keras.Variable(np.ones(3, "float32"))
    assert isinstance(edge.tf_variable(variable), tf.Variable)
    assert edge.nested_layers is core.nested_layers


def test_tfmot_wrappers_and_quantized_weights_are_reachable():
    import tensorflow_model_optimization as tfmot
    import tf_keras

    assert edge.PruneLowMagnitude.__name__ == "PruneLowMagnitude"
    assert edge.ClusterWeights.__name__ == "ClusterWeights"
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    quantized = tfmot.quantization.keras.quantize_model(model)
    wrapper = next(
        layer
        for layer in quantized.layers
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)
    )
    weights = edge.wrapper_weight_quantizers(wrapper)
    assert len(weights) == 1 and len(weights[0]) == 3  # (kernel, quantizer, its variables)
