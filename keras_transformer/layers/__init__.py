"""Keras 3 layers for attention and Transformer stacks, written with ``keras.ops``."""

try:
    import keras  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without Keras installed
    raise ImportError(
        "keras_transformer needs Keras 3: pip install 'keras-transformer[keras]' "
        "(the device runtime alone is keras_transformer_edge.runtime)"
    ) from error

from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.masks import (
    attention_mask_for,
    causal_mask,
    merge_masks,
    padding_mask,
    sliding_window_mask,
)
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.position_embedding import PositionEmbedding
from keras_transformer.layers.rotary_embedding import RotaryEmbedding
from keras_transformer.layers.scaled_dot_product_attention import scaled_dot_product_attention
from keras_transformer.layers.sinusoidal_position_encoding import (
    SinusoidalPositionEncoding,
    sinusoidal_encoding,
)
from keras_transformer.layers.token_and_position_embedding import TokenAndPositionEmbedding
from keras_transformer.layers.transformer_decoder_layer import TransformerDecoderLayer
from keras_transformer.layers.transformer_encoder_layer import TransformerEncoderLayer
from keras_transformer.layers.transformer_stacks import TransformerDecoder, TransformerEncoder
from keras_transformer.layers.validation import ArgumentError

__all__ = [
    "ArgumentError",
    "FeedForward",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "attention_mask_for",
    "causal_mask",
    "merge_masks",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
    "sliding_window_mask",
]
