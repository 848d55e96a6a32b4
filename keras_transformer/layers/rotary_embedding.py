"""Rotary position embedding (RoPE, Su et al. 2021)."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.positions import is_per_row, step_positions
from keras_transformer.layers.validation import ArgumentError


@keras.saving.register_keras_serializable(package="keras_transformer")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates query/key features by an angle proportional to their position.

    Features are split into two halves ``(x1, x2)`` and rotated pairwise
    (``x1 cos - x2 sin, x2 cos + x1 sin``), the GPT-NeoX / LLaMA layout. The dot product of
    a rotated query and key then depends only on their relative position.

    Args:
        max_wavelength: base of the geometric frequency progression.
        scaling_factor: positions are divided by this (linear position interpolation).

    Call arguments:
        inputs: ``[B, T, H, D]`` (``D`` even), or ``[B, H, T, D]`` with ``sequence_axis=2``.
        start_index: absolute position of the first of the ``T`` steps: an int, a scalar
            tensor (the KV-cache write index during incremental decoding) or ``[B]``, one per
            row (``layers/positions.py``).
        sequence_axis: the axis of ``T``.

    Example:
    >>> x = keras.random.normal((2, 8, 4, 16))
    >>> tuple(RotaryEmbedding()(x, start_index=3).shape)
    (2, 8, 4, 16)
    """

    def __init__(self, max_wavelength: int = 10000, scaling_factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.built = True

    def call(self, inputs, start_index=0, sequence_axis: int = 1):
        depth = inputs.shape[-1]
        if depth is None or depth % 2:
            raise ArgumentError(
                f"RotaryEmbedding: the feature depth must be even, got inputs of shape "
                f"{tuple(inputs.shape)}"
            )
        length = ops.shape(inputs)[sequence_axis]
        positions = ops.cast(step_positions(length, start_index), "float32")
        positions = positions / self.scaling_factor
        exponents = ops.arange(0, depth // 2, dtype="float32") * (2.0 / depth)
        inverse_frequencies = ops.power(float(self.max_wavelength), -exponents)
        angles = ops.expand_dims(positions, -1) * inverse_frequencies
        angles = ops.concatenate([angles, angles], axis=-1)  # [T, D], or [B, T, D] per row
        rank, axis = len(inputs.shape), sequence_axis % len(inputs.shape)
        for _ in range(rank - 1 - axis - 1):
            angles = ops.expand_dims(angles, -2)  # [T, 1, D] for [B, T, H, D] inputs
        if is_per_row(start_index):
            for _ in range(axis - 1):
                angles = ops.expand_dims(angles, 1)  # [B, 1, T, D] for [B, H, T, D] inputs
        cos = ops.cast(ops.cos(angles), inputs.dtype)
        sin = ops.cast(ops.sin(angles), inputs.dtype)
        first, second = ops.split(inputs, 2, axis=-1)
        rotated_half = ops.concatenate([-second, first], axis=-1)
        return inputs * cos + rotated_half * sin

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor}
        )
        return config
