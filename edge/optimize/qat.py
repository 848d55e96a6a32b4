"""Quantization-aware training of a bridged model: annotate, calibrate, fit."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from keras_transformer.layers.validation import ArgumentError
from keras_transformer_edge.optimize.checks import _batches, _check_int, _check_tf_keras_model
from keras_transformer_edge.optimize.quantize_configs import (
    TransformerQuantizeConfig,
    TransformerQuantizeScheme,
    quantize_scope,
)
from keras_transformer_edge.tfkeras_bridge import check_model, functional


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
