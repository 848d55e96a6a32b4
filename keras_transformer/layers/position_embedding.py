"""Learned absolute position embedding."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.positions import is_per_row, step_positions
from keras_transformer.layers.validation import ArgumentError


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionEmbedding(keras.layers.Layer):
    """A trainable ``[sequence_length, D]`` table, one row per absolute position.

    Args:
        sequence_length: the maximum number of positions.
        initializer: initializer of the table.

    Call arguments:
        inputs: ``[B, T, D]``; only their length and depth are read.
        start_index: absolute position of the first step: an int, a scalar tensor, or ``[B]``
            (one per row, ``layers/positions.py``).

    Returns ``[T, D]`` embeddings (``[B, T, D]`` for per-row starts), to be added to
    ``inputs``.

    Example:
    >>> x = keras.ops.zeros((2, 5, 8))
    >>> tuple(PositionEmbedding(sequence_length=16)(x).shape)
    (5, 8)
    """

    def __init__(self, sequence_length: int, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        if sequence_length is None or sequence_length < 1:
            raise ArgumentError(
                f"PositionEmbedding: sequence_length must be >= 1, got {sequence_length}"
            )
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        length = inputs.shape[1]
        if length is not None and length > self.sequence_length:
            raise ArgumentError(
                f"PositionEmbedding: inputs of shape {tuple(inputs.shape)} are longer than "
                f"sequence_length={self.sequence_length}"
            )
        if length is None:
            length = ops.shape(inputs)[1]
        if isinstance(start_index, int) and start_index == 0 and isinstance(length, int):
            return ops.cast(self.position_embeddings[:length], self.compute_dtype)
        if is_per_row(start_index):  # a gather of each row's positions: [B, T, D]
            positions = step_positions(length, start_index)
            table = ops.take(self.position_embeddings, positions, axis=0)
            return ops.cast(table, self.compute_dtype)
        return ops.cast(
            ops.slice(
                self.position_embeddings,
                (ops.cast(start_index, "int32"), 0),
                (length, inputs.shape[-1]),
            ),
            self.compute_dtype,
        )

    def compute_mask(self, inputs, mask=None):
        return None  # the output is a [T, D] table, not a masked sequence

    def compute_output_shape(self, input_shape):
        return (input_shape[1], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
