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
