"""Argument checks shared by the optimize functions: one-line ``ArgumentError``s."""

from __future__ import annotations

import tf_keras

from keras_transformer.layers.validation import ArgumentError
from keras_transformer_edge.tfkeras_bridge import bridge_layer


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
