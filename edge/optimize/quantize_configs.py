"""tfmot ``QuantizeConfig``s for the Keras 3 layers of ``keras_transformer`` (attention,
feed-forward, Dense, Embedding), the config that hands the bridged model's layers to them, and
the scheme and scope that make tfmot apply them to our bridge."""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from keras_transformer.layers import FeedForward, MultiHeadAttention
from keras_transformer.layers.validation import ArgumentError
from keras_transformer_edge import private_api
from keras_transformer_edge.optimize.quantizers import (
    FixedRangeQuantizer,
    Quantizer,
    RangeQuantizer,
    SharedRangeQuantizer,
    _weight_quantizer,
)
from keras_transformer_edge.tfkeras_bridge import KerasModelLayer

QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


def _variable(layer, attribute: str) -> tf.Variable:
    value = getattr(layer, attribute)
    if not isinstance(value, keras.Variable):
        raise ArgumentError(
            f"{type(layer).__name__}.{attribute} is not a weight ({type(value).__name__})"
        )
    return private_api.tf_variable(value)


class _LayerQuantizeConfig(QuantizeConfig):
    """A ``QuantizeConfig`` for one Keras 3 layer of the bridged model: its kernels by
    attribute, its activations by quantization point (``layer.quantization_points``)."""

    weight_attributes: tuple[str, ...] = ()

    def activation_points(self, layer) -> tuple[str, ...]:
        return ()

    def activation_quantizer(self, point: str) -> Quantizer:
        return RangeQuantizer()

    def attributes(self, layer) -> tuple[str, ...]:
        """Every attribute of ``layer`` this config replaces during a call."""
        points = ("quantization_points",) if self.activation_points(layer) else ()
        return self.weight_attributes + points

    def get_weights_and_quantizers(self, layer):
        return [(_variable(layer, name), _weight_quantizer()) for name in self.weight_attributes]

    def get_activations_and_quantizers(self, layer):
        return [
            (tf_keras.activations.linear, self.activation_quantizer(point))
            for point in self.activation_points(layer)
        ]

    def set_quantize_weights(self, layer, quantize_weights):
        for name, tensor in zip(self.weight_attributes, quantize_weights, strict=True):
            object.__setattr__(layer, name, tensor)

    def set_quantize_activations(self, layer, quantize_activations):
        points = dict(zip(self.activation_points(layer), quantize_activations, strict=True))
        if points:
            object.__setattr__(layer, "quantization_points", points)

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


class MultiHeadAttentionQuantizeConfig(_LayerQuantizeConfig):
    """Our ``MultiHeadAttention``: int8 query, key/value and output kernels, and fake-quant
    at every point of ``MultiHeadAttention.QUANTIZATION_POINTS`` (the projections before the
    head split, the scaled query, the scores, the bounded masked scores, the softmax on
    TFLite's fixed [0, 255/256] range, the attention output, the output projection)."""

    weight_attributes = ("query_kernel", "key_value_kernel", "output_kernel")

    def activation_points(self, layer):
        return MultiHeadAttention.QUANTIZATION_POINTS

    def attributes(self, layer):
        return (*super().attributes(layer), "bounded_masked_scores")

    def set_quantize_activations(self, layer, quantize_activations):
        super().set_quantize_activations(layer, quantize_activations)
        # Int8 scores need the bounded mask (quantization_points.QUANTIZED_MASK_VALUE).
        object.__setattr__(layer, "bounded_masked_scores", True)

    def activation_quantizer(self, point):
        if point == "attention_weights":
            return FixedRangeQuantizer()
        if point == "memory_projection":  # stacked over layers into the cross-attention cache
            return SharedRangeQuantizer("memory_projection")
        return RangeQuantizer()


class FeedForwardQuantizeConfig(_LayerQuantizeConfig):
    """Our ``FeedForward``: int8 kernels, fake-quant on the activated hidden layer and the
    output."""

    weight_attributes = ("intermediate_kernel", "output_kernel")

    def activation_points(self, layer):
        return FeedForward.QUANTIZATION_POINTS


class DenseQuantizeConfig(_LayerQuantizeConfig):
    """A Keras 3 ``Dense`` (classifier and vocabulary heads): an int8 kernel. Its output
    (the logits) has no fake-quant point: a range tracked while the logits grow would clip
    the largest ones and tie the argmax; the converter calibrates it on the final model."""

    weight_attributes = ("_kernel",)


class EmbeddingQuantizeConfig(_LayerQuantizeConfig):
    """A Keras 3 ``Embedding``: an int8 table (a tied output head reads the same table)."""

    weight_attributes = ("_embeddings",)


LAYER_CONFIGS: dict[type, type[_LayerQuantizeConfig]] = {
    MultiHeadAttention: MultiHeadAttentionQuantizeConfig,
    FeedForward: FeedForwardQuantizeConfig,
    keras.layers.Dense: DenseQuantizeConfig,
    keras.layers.Embedding: EmbeddingQuantizeConfig,
}


class TransformerQuantizeConfig(QuantizeConfig):
    """The ``QuantizeConfig`` of a :class:`KerasModelLayer`: the configs of its Keras 3 layers
    (``LAYER_CONFIGS``) in model order, their weights and activations concatenated.

    The replaced attributes of every Keras 3 layer are put back at the end of each call by
    the bridge, so the Keras 3 model computes in float outside the quantized model.
    """

    def _parts(self, layer: KerasModelLayer):
        parts = []
        for sublayer in private_api.nested_layers(layer.model):
            if sublayer is layer.model:
                continue
            config_class = next(
                (config for cls, config in LAYER_CONFIGS.items() if type(sublayer) is cls), None
            )
            if config_class is not None:
                parts.append((sublayer, config_class()))
        return parts

    def _split(self, layer, values, count):
        offset = 0
        for sublayer, config in self._parts(layer):
            size = count(sublayer, config)
            yield sublayer, config, values[offset : offset + size]
            offset += size
        if offset != len(values):
            raise ValueError(f"expected {offset} quantized values, got {len(values)}")

    def get_weights_and_quantizers(self, layer):
        return [
            pair
            for sublayer, config in self._parts(layer)
            for pair in config.get_weights_and_quantizers(sublayer)
        ]

    def get_activations_and_quantizers(self, layer):
        return [
            pair
            for sublayer, config in self._parts(layer)
            for pair in config.get_activations_and_quantizers(sublayer)
        ]

    def set_quantize_weights(self, layer, quantize_weights):
        def count(sublayer, config):
            return len(config.weight_attributes)

        for sublayer, config, chunk in self._split(layer, quantize_weights, count):
            layer.remember(sublayer, config.attributes(sublayer))
            config.set_quantize_weights(sublayer, chunk)

    def set_quantize_activations(self, layer, quantize_activations):
        def count(sublayer, config):
            return len(config.activation_points(sublayer))

        for sublayer, config, chunk in self._split(layer, quantize_activations, count):
            layer.remember(sublayer, config.attributes(sublayer))
            config.set_quantize_activations(sublayer, chunk)

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


class _NoLayoutTransform:
    """Leaves the model as it is: the default scheme would put a fake-quant layer on the
    int32 token inputs."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _NoRegistry:
    def supports(self, layer):
        return False

    def get_quantize_config(self, layer):
        return None


class TransformerQuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """``quantize_apply``'s scheme: no layout changes; layers are quantized only as annotated."""

    def get_layout_transformer(self):
        return _NoLayoutTransform()

    def get_quantize_registry(self):
        return _NoRegistry()


def quantize_scope():
    """tfmot's ``quantize_scope`` with the objects of this module (for cloning and loading)."""
    return tfmot.quantization.keras.quantize_scope(
        {
            "KerasModelLayer": KerasModelLayer,
            "TransformerQuantizeConfig": TransformerQuantizeConfig,
            "RangeQuantizer": RangeQuantizer,
            "SharedRangeQuantizer": SharedRangeQuantizer,
            "FixedRangeQuantizer": FixedRangeQuantizer,
        }
    )
