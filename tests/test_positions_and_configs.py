"""Positional encodings against their formulas, and get_config round trips of every layer."""

import keras
import numpy as np
import pytest

from keras_transformer import layers


def test_sinusoidal_encoding_matches_the_paper():
    x = np.zeros((2, 7, 16), "float32")
    got = np.asarray(layers.SinusoidalPositionEncoding()(x, start_index=3))
    positions = np.arange(3, 10)[:, None]
    i = np.arange(8)[None, :]
    angles = positions / np.power(10000.0, 2 * i / 16)
    expected = np.zeros((7, 16))
    expected[:, 0::2], expected[:, 1::2] = np.sin(angles), np.cos(angles)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_learned_position_embedding_slices_from_start_index():
    layer = layers.PositionEmbedding(sequence_length=10)
    x = np.zeros((1, 4, 6), "float32")
    table = np.asarray(layer(np.zeros((1, 10, 6), "float32")))
    np.testing.assert_array_equal(np.asarray(layer(x)), table[:4])
    np.testing.assert_array_equal(np.asarray(layer(x, start_index=5)), table[5:9])
    with pytest.raises(ValueError, match="longer than sequence_length=10"):
        layer(np.zeros((1, 11, 6), "float32"))


@pytest.mark.parametrize(
    "layer",
    [
        layers.PositionEmbedding(sequence_length=12),
        layers.SinusoidalPositionEncoding(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_per_row_start_index_gives_each_row_its_own_positions(layer):
    # Continuous batching: rows of one step sit at different positions ([B] start_index).
    x = np.zeros((3, 2, 6), "float32")
    starts = np.array([0, 7, 3], "int32")
    got = np.asarray(layer(x, start_index=starts))
    assert got.shape == (3, 2, 6)
    for row, start in enumerate(starts):
        np.testing.assert_allclose(got[row], np.asarray(layer(x, start_index=int(start))))


def test_rotary_per_row_start_index_matches_each_rows_scalar_start(rng):
    rotary = layers.RotaryEmbedding()
    starts = np.array([5, 0, 11], "int32")
    for shape, axis in (((3, 2, 4, 8), 1), ((3, 4, 2, 8), 2)):  # [B, T, H, D], [B, H, T, D]
        x = rng.standard_normal(shape).astype("float32")
        got = np.asarray(rotary(x, start_index=starts, sequence_axis=axis))
        for row, start in enumerate(starts):
            alone = rotary(x[row : row + 1], start_index=int(start), sequence_axis=axis)
            np.testing.assert_allclose(got[row : row + 1], np.asarray(alone), atol=1e-6)


def test_token_and_position_embedding_sums_and_masks():
    layer = layers.TokenAndPositionEmbedding(
        20, 8, 6, position_encoding="sinusoidal", scale_embeddings=True
    )
    ids = np.array([[4, 5, 0]])
    out = layer(ids)
    table = layer.token_embedding.embeddings.numpy()
    expected = table[ids[0]] * np.sqrt(6) + np.asarray(layers.sinusoidal_encoding(np.arange(3), 6))
    np.testing.assert_allclose(np.asarray(out)[0], expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer.compute_mask(ids)), ids != 0)


LAYERS = [
    layers.FeedForward(
        32, activation="gelu", gated=True, dropout=0.1, output_dim=8, use_bias=False
    ),
    layers.PositionEmbedding(12, initializer="zeros"),
    layers.RotaryEmbedding(max_wavelength=500, scaling_factor=2.0),
    layers.SinusoidalPositionEncoding(max_wavelength=100.0),
    layers.TokenAndPositionEmbedding(
        30, 12, 16, position_encoding="none", mask_zero=False, scale_embeddings=True, dropout=0.2
    ),
    layers.TransformerEncoderLayer(
        4,
        64,
        dropout=0.1,
        attention_dropout=0.0,
        activation="gelu",
        normalize_first=True,
        num_key_value_heads=2,
        use_rotary_embedding=True,
        sliding_window=3,
    ),
    layers.TransformerDecoderLayer(4, 64, gated_feedforward=True, layer_norm_epsilon=1e-6),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_layer_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
