"""tensorflow-model-optimization for our models: quantization-aware training (attention and
feed-forward included), magnitude pruning (unstructured or 2:4), weight clustering, and a
full-int8 TFLite conversion of the quantization-aware model.

tfmot accepts tf-keras (Keras 2) models only. Every function here takes a Keras 3
``keras_transformer`` model and works on :func:`~keras_transformer_edge.tfkeras_bridge.
to_tf_keras`'s bridge, a tf-keras layer that runs the Keras 3 model itself (no second copy of
the layer math). The optimized tf-keras model trains with ``fit`` on a ``tf.data`` dataset;
:func:`strip` removes tfmot's wrappers and gives back a Keras 3 model with the optimized
weights, for Keras-side evaluation and for ``keras_transformer_edge.convert``.

Quantization-aware training
    :func:`quantization_aware` annotates the bridge with :class:`TransformerQuantizeConfig`
    and applies tfmot's ``quantize_apply``. That config hands each Keras 3 layer of the model
    to its own ``QuantizeConfig``: :class:`MultiHeadAttentionQuantizeConfig` (int8 kernels;
    fake-quant on keys, values, scaled queries, scores, the bounded masked scores, the softmax,
    the attention output and the projection; see
    :mod:`keras_transformer.layers.quantization_points`), :class:`FeedForwardQuantizeConfig`,
    :class:`DenseQuantizeConfig` and :class:`EmbeddingQuantizeConfig`. Ranges start from a
    calibration pass (:func:`calibrate`) and follow a moving average while training.
    :func:`convert_quantization_aware` writes the ``encode``/``decode`` (or ``prefill``/
    ``decode``) signatures of ``convert.py`` to a full-int8 .tflite: int8 weights and
    activations inside, float inputs and outputs, builtin ops only. Tensors without a
    fake-quant point (LayerNorm, residual sums, embeddings plus positions) take their ranges
    from a representative dataset, the same way the converter does for any QAT model.

Pruning and clustering
    :func:`prune` wraps the bridge in tfmot's ``PruneLowMagnitude`` (``structure="2:4"`` uses
    ``sparsity_m_by_n=(2, 4)``: at least 2 zeros in every 4 consecutive weights along a
    kernel's input axis) and :func:`cluster` in ``ClusterWeights``. Both act on the 2-D
    matmul kernels (attention, feed-forward, Dense heads); embeddings, biases and norms stay.
    Train with ``fit`` (pruning needs :func:`pruning_callbacks`), then :func:`strip`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import (
    ClusterWeights,
)
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,
)

from keras_transformer.layers import FeedForward, MultiHeadAttention
from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel
from keras_transformer_edge.convert import ConversionError, check_builtin_ops
from keras_transformer_edge.runtime.signatures import position
from keras_transformer_edge.tfkeras_bridge import (
    KerasModelLayer,
    bridge_layer,
    check_model,
    functional,
    to_tf_keras,
)

__all__ = [
    "DenseQuantizeConfig",
    "EmbeddingQuantizeConfig",
    "FixedRangeQuantizer",
    "FeedForwardQuantizeConfig",
    "KerasModelLayer",
    "MaskedCrossentropy",
    "MultiHeadAttentionQuantizeConfig",
    "RangeQuantizer",
    "STRUCTURES",
    "SharedRangeQuantizer",
    "TransformerQuantizeConfig",
    "calibrate",
    "cluster",
    "convert_quantization_aware",
    "prune",
    "pruning_callbacks",
    "quantization_aware",
    "quantization_aware_training",
    "quantize_scope",
    "strip",
    "to_tf_keras",
]

STRUCTURES = ("unstructured", "2:4")
Quantizer = tfmot.quantization.keras.quantizers.Quantizer
QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


# -- quantizers ----------------------------------------------------------------------------
class RangeQuantizer(Quantizer):
    """Asymmetric 8-bit fake quantization of an activation with a tracked range.

    The range starts at the first batch seen in training mode (a calibration pass) and then
    follows an exponential moving average (``ema_decay``). tfmot's ``MovingAverageQuantizer``
    starts from [-6, 6] with a decay of 0.999, which a short fine-tuning never moves.
    """

    def __init__(self, num_bits: int = 8, ema_decay: float = 0.99):
        self.num_bits = num_bits
        self.ema_decay = ema_decay

    def build(self, tensor_shape, name, layer):
        def weight(suffix):
            return layer.add_weight(
                f"{name}_{suffix}",
                shape=(),
                initializer=tf_keras.initializers.Constant(0.0),
                trainable=False,
            )

        return {"min_var": weight("min"), "max_var": weight("max")}

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = weights["min_var"], weights["max_var"]
        if training:
            batch_low = tf.minimum(tf.reduce_min(inputs), 0.0)
            batch_high = tf.maximum(tf.reduce_max(inputs), 0.0)
            fresh = tf.logical_and(tf.equal(low, 0.0), tf.equal(high, 0.0))
            decay = self.ema_decay
            new_low = tf.where(fresh, batch_low, decay * low + (1 - decay) * batch_low)
            new_high = tf.where(fresh, batch_high, decay * high + (1 - decay) * batch_high)
            with tf.control_dependencies([low.assign(new_low), high.assign(new_high)]):
                return tf.quantization.fake_quant_with_min_max_vars(
                    inputs, tf.identity(new_low), tf.identity(new_high), num_bits=self.num_bits
                )
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, low, high, num_bits=self.num_bits
        )

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay}

    def __eq__(self, other):
        return isinstance(other, RangeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class SharedRangeQuantizer(RangeQuantizer):
    """A :class:`RangeQuantizer` whose range is shared by every quantizer of the same
    ``key`` in one wrapper: tensors that the int8 model packs into one tensor must have one
    scale (the cross-attention keys and values of all decoder layers, stacked into the
    ``encode`` signature's ``cross_attention_cache``). The range follows all of them."""

    def __init__(self, key: str, num_bits: int = 8, ema_decay: float = 0.99):
        super().__init__(num_bits, ema_decay)
        self.key = key

    def build(self, tensor_shape, name, layer):
        shared = layer.__dict__.get("_shared_quantizer_ranges")
        if shared is None:
            shared = {}
            object.__setattr__(layer, "_shared_quantizer_ranges", shared)
        if self.key not in shared:
            shared[self.key] = super().build(tensor_shape, f"shared_{self.key}", layer)
        return shared[self.key]

    def get_config(self):
        return {**super().get_config(), "key": self.key}

    def __eq__(self, other):
        return isinstance(other, SharedRangeQuantizer) and self.get_config() == other.get_config()


class FixedRangeQuantizer(Quantizer):
    """8-bit fake quantization on a fixed range: the softmax output, whose int8 TFLite kernel
    always writes scale 1/256 and zero point -128, i.e. the range [0, 255/256]."""

    def __init__(self, low: float = 0.0, high: float = 255.0 / 256.0, num_bits: int = 8):
        self.low, self.high, self.num_bits = float(low), float(high), num_bits

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.quantization.fake_quant_with_min_max_args(
            inputs, min=self.low, max=self.high, num_bits=self.num_bits
        )

    def get_config(self):
        return {"low": self.low, "high": self.high, "num_bits": self.num_bits}

    def __eq__(self, other):
        return isinstance(other, FixedRangeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


def _weight_quantizer() -> Quantizer:
    # Symmetric per-tensor int8 in [-127, 127], the TFLite weight format.
    return tfmot.quantization.keras.quantizers.LastValueQuantizer(
        num_bits=8, per_axis=False, symmetric=True, narrow_range=True
    )


# -- quantize configs of the Keras 3 layers -------------------------------------------------
def _variable(layer, attribute: str) -> tf.Variable:
    value = getattr(layer, attribute)
    if not isinstance(value, keras.Variable):
        raise ArgumentError(
            f"{type(layer).__name__}.{attribute} is not a weight ({type(value).__name__})"
        )
    return value._value


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
        for sublayer in layer.model._flatten_layers(include_self=False, recursive=True):
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


# -- argument checks ------------------------------------------------------------------------
def _check_int(function: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{function}: `{name}` must be an int >= {minimum}, got {value!r}")


def _check_tf_keras_model(function: str, model) -> None:
    if not isinstance(model, tf_keras.Model):
        raise ArgumentError(
            f"{function}: expected the tf-keras model made by quantization_aware, prune or "
            f"cluster, got {type(model).__name__}"
        )
    bridge_layer(model)


def _batches(function: str, data, steps: int):
    """Up to ``steps`` model-input batches from a dataset of ``x`` or ``(x, y[, w])``."""
    if data is None or isinstance(data, (str, bytes, int, float)):
        raise ArgumentError(
            f"{function}: `calibration_data` must be a tf.data.Dataset or an iterable of "
            f"model-input batches, got {type(data).__name__}"
        )
    batches = []
    for element in data:
        if isinstance(element, tuple):
            element = element[0]
        batches.append(element)
        if len(batches) >= steps:
            break
    if not batches:
        raise ArgumentError(f"{function}: `calibration_data` is empty")
    return batches


# -- quantization-aware training ------------------------------------------------------------
def quantization_aware(
    model: keras.Model,
    calibration_data: Iterable | tf.data.Dataset | None = None,
    calibration_steps: int = 4,
    prefill_length: int | None = None,
) -> tf_keras.Model:
    """A quantization-aware (fake-quantized) tf-keras copy of ``model``, ready for ``fit``.

    Args:
        model: a Keras 3 ``keras_transformer`` model.
        calibration_data: batches of model inputs, or ``(inputs, targets)`` (the training
            dataset works); the first ``calibration_steps`` set the initial int8 ranges. If
            ``None``, call :func:`calibrate` before using the model.
        calibration_steps: how many batches calibrate.
        prefill_length: for a language model, the prompt length of its ``prefill`` endpoint.

    Returns:
        A functional tf-keras model whose one layer is tfmot's ``QuantizeWrapperV2`` around a
        :class:`KerasModelLayer`. ``quantize_apply`` copied the weights: ``model`` itself is
        not trained; :func:`strip` gives the trained weights back as a Keras 3 model.
    """
    check_model("quantization_aware", model)
    _check_int("quantization_aware", "calibration_steps", calibration_steps, 1)
    if prefill_length is not None:
        _check_int("quantization_aware", "prefill_length", prefill_length, 1)
    batches = None
    if calibration_data is not None:
        batches = _batches("quantization_aware", calibration_data, calibration_steps)
    with quantize_scope():
        annotated = functional(
            model,
            lambda layer: tfmot.quantization.keras.quantize_annotate_layer(
                layer, TransformerQuantizeConfig()
            ),
            prefill_length=prefill_length,
        )
        quantized = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=TransformerQuantizeScheme()
        )
    if batches is not None:
        calibrate(quantized, batches)
    return quantized


def _quantize_wrapper(model: tf_keras.Model):
    for layer in model.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
            return layer
    raise ArgumentError(
        f"expected a model made by quantization_aware, got {getattr(model, 'name', model)!r}"
    )


def calibrate(quantized: tf_keras.Model, batches: Iterable) -> None:
    """Set the int8 ranges of ``quantized`` from model-input ``batches``: the weights' ranges
    from the weights, the activations' from the first batch, then a moving average. The
    model runs in inference mode (no dropout)."""
    _check_tf_keras_model("calibrate", quantized)
    wrapper = _quantize_wrapper(quantized)
    for batch in _batches("calibrate", batches, 1 << 30):
        wrapper(batch, training=True, model_training=False)


class MaskedCrossentropy(tf_keras.losses.Loss):
    """tf-keras twin of ``keras_transformer_pipelines.objectives.MaskedSparseCrossentropy``:
    sparse cross-entropy from logits with label smoothing ``e`` over ``V`` classes
    (``(1 - e) * (lse(z) - z_y) + e * (lse(z) - mean(z))``), averaged over the targets that
    are not ``padding_id``."""

    def __init__(self, label_smoothing: float = 0.0, padding_id: int = 0, **kwargs):
        kwargs.setdefault("name", "masked_crossentropy")
        super().__init__(**kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ArgumentError(
                f"MaskedCrossentropy: `label_smoothing` must be in [0, 1), got {label_smoothing}"
            )
        self.label_smoothing = float(label_smoothing)
        self.padding_id = padding_id

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, "int32")
        logits = tf.cast(y_pred, "float32")
        log_normalizer = tf.reduce_logsumexp(logits, axis=-1)
        true_logit = tf.gather(logits, tf.maximum(y_true, 0), axis=-1, batch_dims=y_true.shape.rank)
        loss = log_normalizer - true_logit
        if self.label_smoothing:
            uniform = log_normalizer - tf.reduce_mean(logits, axis=-1)
            loss = (1.0 - self.label_smoothing) * loss + self.label_smoothing * uniform
        mask = tf.cast(tf.not_equal(y_true, self.padding_id), "float32")
        # One scalar: the mean over real tokens (the reduction then leaves it as it is).
        return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "padding_id": self.padding_id})
        return config


def quantization_aware_training(
    model: keras.Model,
    train_data: tf.data.Dataset,
    steps: int,
    learning_rate: float = 3e-5,
    calibration_steps: int = 4,
    label_smoothing: float = 0.1,
    weight_decay: float = 0.0,
    clipnorm: float | None = 1.0,
    padding_id: int = 0,
    prefill_length: int | None = None,
    callbacks: list[tf_keras.callbacks.Callback] | None = None,
    verbose: int = 0,
) -> tuple[tf_keras.Model, tf_keras.callbacks.History]:
    """Fine-tune a trained ``model`` with fake-quantized int8 weights and activations.

    :func:`quantization_aware` on the first ``calibration_steps`` batches of ``train_data``,
    then ``steps`` steps of tf-keras ``fit`` (AdamW at a constant ``learning_rate``, the
    label-smoothed masked cross-entropy :class:`MaskedCrossentropy`) on ``train_data``,
    repeated as needed. A run's model goes to a full-int8 .tflite in three lines::

        qat, history = quantization_aware_training(model, train_batches, 200)
        flatbuffer = convert_quantization_aware(qat, train_batches)
        trained = strip(qat)  # the fine-tuned float weights, a Keras 3 model

    Args:
        model: a trained Keras 3 ``keras_transformer`` model (not modified: tfmot copies its
            weights).
        train_data: ``(inputs, labels)`` batches, e.g. the training pipeline's
            (``translation_dataset(..., shuffle=True)``); labels of ``padding_id`` are skipped.
        steps: optimizer steps (>= 1).
        learning_rate: small: the model is trained already (1e-5 to 1e-4).
        label_smoothing, padding_id: of the loss (the training recipe's values).
        weight_decay, clipnorm: AdamW's decoupled weight decay and gradient-norm clipping.

    Returns:
        The quantization-aware tf-keras model and ``fit``'s history (``loss`` per step).
    """
    check_model("quantization_aware_training", model)
    _check_int("quantization_aware_training", "steps", steps, 1)
    if not isinstance(train_data, tf.data.Dataset):
        raise ArgumentError(
            "quantization_aware_training: `train_data` must be a tf.data.Dataset of "
            f"(inputs, labels), got {type(train_data).__name__}"
        )
    for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ArgumentError(
                f"quantization_aware_training: `{name}` must be a number >= 0, got {value!r}"
            )
    quantized = quantization_aware(model, train_data, calibration_steps, prefill_length)
    options = {"clipnorm": clipnorm} if clipnorm else {}
    quantized.compile(
        optimizer=tf_keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, **options
        ),
        loss=MaskedCrossentropy(label_smoothing, padding_id),
    )
    history = tf_keras.callbacks.History()
    quantized.fit(
        train_data.repeat(),
        steps_per_epoch=1,
        epochs=steps,
        callbacks=[history, *(callbacks or [])],
        verbose=verbose,
    )
    return quantized, history


# -- pruning ------------------------------------------------------------------------------
def prune(
    model: keras.Model,
    target_sparsity: float = 0.5,
    structure: str = "unstructured",
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int = 1,
) -> tf_keras.Model:
    """A tf-keras model that prunes ``model``'s matmul kernels by magnitude while it trains.

    Args:
        model: a Keras 3 ``keras_transformer`` model. It shares its variables with the
            result: training the result prunes ``model`` in place.
        target_sparsity: fraction of zeros in each kernel, in (0, 1); must be 0.5 for
            ``"2:4"``.
        structure: ``"unstructured"``, or ``"2:4"`` (2 of every 4 consecutive weights along
            each kernel's input axis are zero; tfmot's ``sparsity_m_by_n=(2, 4)``).
        begin_step: training step at which pruning starts.
        end_step: with ``"unstructured"``, sparsity ramps from 0 at ``begin_step`` to the
            target at ``end_step`` (polynomial decay); ``None`` prunes to the target at once.
        frequency: steps between mask updates.

    Train with ``fit(..., callbacks=pruning_callbacks())``, then :func:`strip`.
    """
    check_model("prune", model)
    if structure not in STRUCTURES:
        raise ArgumentError(f"prune: `structure` must be one of {STRUCTURES}, got {structure!r}")
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)):
        raise ArgumentError(f"prune: `target_sparsity` must be a number, got {target_sparsity!r}")
    if not 0.0 < target_sparsity < 1.0:
        raise ArgumentError(f"prune: `target_sparsity` must be in (0, 1), got {target_sparsity}")
    if structure == "2:4" and target_sparsity != 0.5:
        raise ArgumentError(f"prune: 2:4 sparsity is 0.5 exactly, got {target_sparsity}")
    _check_int("prune", "begin_step", begin_step, 0)
    _check_int("prune", "frequency", frequency, 1)
    if end_step is not None:
        _check_int("prune", "end_step", end_step, begin_step + 1)
    sparsity = tfmot.sparsity.keras
    if end_step is None or structure == "2:4":
        schedule = sparsity.ConstantSparsity(target_sparsity, begin_step, frequency=frequency)
    else:
        schedule = sparsity.PolynomialDecay(
            0.0, target_sparsity, begin_step, end_step, frequency=frequency
        )
    options = {"pruning_schedule": schedule}
    if structure == "2:4":
        options["sparsity_m_by_n"] = (2, 4)
    return sparsity.prune_low_magnitude(to_tf_keras(model), **options)


def pruning_callbacks() -> list[tf_keras.callbacks.Callback]:
    """The callbacks ``fit`` needs while pruning (tfmot's ``UpdatePruningStep``)."""
    return [tfmot.sparsity.keras.UpdatePruningStep()]


# -- clustering ---------------------------------------------------------------------------
def cluster(
    model: keras.Model, number_of_clusters: int = 16, initialization: str = "kmeans++"
) -> tf_keras.Model:
    """A tf-keras model whose matmul kernels each take ``number_of_clusters`` values
    (trainable centroids), tfmot's weight clustering. Train with ``fit``, then :func:`strip`.

    Args:
        model: a Keras 3 ``keras_transformer`` model (its variables are shared).
        number_of_clusters: distinct values per kernel, >= 2.
        initialization: centroid initialization, ``"kmeans++"``, ``"linear"``,
            ``"density"`` or ``"random"``.
    """
    check_model("cluster", model)
    _check_int("cluster", "number_of_clusters", number_of_clusters, 2)
    inits = tfmot.clustering.keras.CentroidInitialization
    choices = {
        "kmeans++": inits.KMEANS_PLUS_PLUS,
        "linear": inits.LINEAR,
        "density": inits.DENSITY_BASED,
        "random": inits.RANDOM,
    }
    if initialization not in choices:
        raise ArgumentError(
            f"cluster: `initialization` must be one of {sorted(choices)}, got {initialization!r}"
        )
    return tfmot.clustering.keras.cluster_weights(
        to_tf_keras(model),
        number_of_clusters=number_of_clusters,
        cluster_centroids_init=choices[initialization],
    )


# -- back to Keras 3 ------------------------------------------------------------------------
def strip(
    optimized: tf_keras.Model,
    into: keras.Model | None = None,
    bake_quantized_weights: bool = False,
) -> keras.Model:
    """The Keras 3 model inside ``optimized`` with tfmot's wrappers removed.

    Pruning is stripped with tfmot's ``strip_pruning`` (the kernels are already zero where
    masked), clustering with ``strip_clustering`` (the kernels take their clustered values).
    For a quantization-aware model the float weights it trained come back; with
    ``bake_quantized_weights`` every quantized weight is replaced by its fake-quantized value
    (what the int8 model stores, in float).

    Args:
        into: copy the weights into this Keras 3 model (same architecture) and return it.
    """
    _check_tf_keras_model("strip", optimized)
    if into is not None:
        check_model("strip", into)
    layers = optimized.layers
    if any(isinstance(layer, PruneLowMagnitude) for layer in layers):
        optimized = tfmot.sparsity.keras.strip_pruning(optimized)
    elif any(isinstance(layer, ClusterWeights) for layer in layers):
        with quantize_scope():
            optimized = tfmot.clustering.keras.strip_clustering(optimized)
    elif bake_quantized_weights:
        wrapper = _quantize_wrapper(optimized)
        for weight, quantizer, variables in wrapper._weight_vars:
            weight.assign(quantizer(weight, False, variables))
    result = bridge_layer(optimized).model
    if into is not None and into is not result:
        into.ensure_built()
        into.set_weights(result.get_weights())
        return into
    return result


# -- full-int8 TFLite ---------------------------------------------------------------------
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
    wrapper = _quantize_wrapper(quantized)
    model = bridge.model
    samples: dict[str, list] = {name: [] for name in bridge.endpoint_signatures}
    if not samples:
        raise ArgumentError(f"{type(model).__name__} has no encode/decode signatures")
    specs = bridge.endpoint_signatures

    def run(name, **inputs):
        return wrapper(inputs, training=False, endpoint=name)

    for batch in _batches("representative_samples", batches, steps or 1 << 30):
        if isinstance(model, Seq2SeqTransformer):
            source_length = specs["encode"][0].shape[1]
            for source, target in zip(
                np.asarray(batch["encoder_token_ids"]), np.asarray(batch["decoder_token_ids"])
            ):
                source = np.zeros((1, source_length), "int32") + np.pad(
                    source[:source_length], (0, max(0, source_length - len(source)))
                )
                samples["encode"].append({"source_ids": source})
                encoded = run("encode", source_ids=tf.constant(source))
                cache = np.zeros(specs["decode"][1].shape, "float32")
                for index in range(min(len(target), cache.shape[4])):
                    if index and target[index] == 0:
                        break
                    inputs = {
                        "token": target[None, index : index + 1].astype("int32"),
                        "cache": cache,
                        "index": position(index),
                        "cross_attention_cache": encoded["cross_attention_cache"].numpy(),
                        "source_mask": encoded["source_mask"].numpy(),
                    }
                    samples["decode"].append(inputs)
                    cache = run("decode", **inputs)["cache"].numpy()
        else:
            prefill_length = specs["prefill"][0].shape[1]
            for tokens in np.asarray(batch):
                cache = np.zeros(specs["prefill"][1].shape, "float32")
                inputs = {"tokens": tokens[None, :prefill_length].astype("int32"), "cache": cache}
                samples["prefill"].append(inputs)
                cache = run("prefill", **inputs)["cache"].numpy()
                for index in range(prefill_length, min(len(tokens), cache.shape[4])):
                    inputs = {
                        "token": tokens[None, index : index + 1].astype("int32"),
                        "cache": cache,
                        "index": position(index),
                    }
                    samples["decode"].append(inputs)
                    cache = run("decode", **inputs)["cache"].numpy()
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
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DEQUANTIZE":
            continue
        outputs = [tensors[i]["dtype"] for i in op["outputs"] if i in tensors]
        if any(dtype == np.float32 for dtype in outputs):
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts
