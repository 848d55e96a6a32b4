"""Fixed sinusoidal position encoding of "Attention Is All You Need"."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.positions import step_positions


def sinusoidal_encoding(positions, depth: int, max_wavelength: float = 10000.0, dtype="float32"):
    """``[..., depth]`` encodings of ``positions`` (``[T]`` or ``[B, T]``):
    ``PE(p, 2i) = sin(p / w^(2i/d))``, ``PE(p, 2i+1) = cos(...)``."""
    positions = ops.cast(positions, "float32")
    pair_index = ops.arange(depth, dtype="int32") // 2
    timescales = ops.power(float(max_wavelength), -ops.cast(2 * pair_index, "float32") / depth)
    angles = ops.expand_dims(positions, -1) * timescales
    is_odd = ops.cast(ops.arange(depth) % 2, "bool")
    return ops.cast(ops.where(is_odd, ops.cos(angles), ops.sin(angles)), dtype)


@keras.saving.register_keras_serializable(package="keras_transformer")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Returns the sinusoidal encodings for the positions of ``inputs`` (no weights).

    Args:
        max_wavelength: the largest wavelength of the sinusoids (10000 in the paper).

    Call arguments:
        inputs: ``[B, T, D]`` embeddings; only their length and depth are read.
        start_index: absolute position of the first step: an int, a scalar tensor, or ``[B]``
            (one per row, ``layers/positions.py``).

    Returns ``[T, D]`` encodings (``[B, T, D]`` for per-row starts), to be added to ``inputs``
    (they broadcast over the batch).

    Example:
    >>> x = keras.ops.zeros((2, 5, 8))
    >>> tuple((x + SinusoidalPositionEncoding()(x)).shape)
    (2, 5, 8)
    """

    def __init__(self, max_wavelength: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        positions = step_positions(length, start_index)
        return sinusoidal_encoding(
            positions, inputs.shape[-1], self.max_wavelength, dtype=self.compute_dtype
        )

    def compute_mask(self, inputs, mask=None):
        return None  # the output is a [T, D] table, not a masked sequence

    def compute_output_shape(self, input_shape):
        return (input_shape[1], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
