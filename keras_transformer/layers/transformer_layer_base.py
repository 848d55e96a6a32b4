"""What encoder and decoder layers share: configuration, sublayer factories, residual blocks."""

from __future__ import annotations

import keras

from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.validation import check_divisible, check_rank, clone_initializer


class TransformerLayerBase(keras.layers.Layer):
    """Base of :class:`TransformerEncoderLayer` and :class:`TransformerDecoderLayer`.

    Every block is ``x + dropout(sublayer(norm(x)))`` (pre-LN, ``normalize_first=True``) or
    ``norm(x + dropout(sublayer(x)))`` (post-LN, the original Transformer).
    """

    def __init__(
        self,
        num_heads: int,
        intermediate_dim: int,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        activation="relu",
        gated_feedforward: bool = False,
        normalize_first: bool = False,
        layer_norm_epsilon: float = 1e-5,
        num_key_value_heads: int | None = None,
        use_rotary_embedding: bool = False,
        rotary_max_wavelength: int = 10000,
        sliding_window: int | None = None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.activation = keras.activations.get(activation)
        self.gated_feedforward = gated_feedforward
        self.normalize_first = normalize_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_key_value_heads = num_key_value_heads
        self.use_rotary_embedding = use_rotary_embedding
        self.rotary_max_wavelength = rotary_max_wavelength
        self.sliding_window = sliding_window
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _width(self, sequence_shape, argument: str) -> int:
        owner = type(self).__name__
        check_rank(owner, argument, sequence_shape, 3)
        width = sequence_shape[-1]
        check_divisible(owner, width, self.num_heads)
        return width

    def _make_attention(self, width: int, name: str, self_attention: bool) -> MultiHeadAttention:
        return MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=width // self.num_heads,
            num_key_value_heads=self.num_key_value_heads,
            dropout=self.attention_dropout,
            use_rotary_embedding=self.use_rotary_embedding and self_attention,
            rotary_max_wavelength=self.rotary_max_wavelength,
            sliding_window=self.sliding_window if self_attention else None,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def _make_feedforward(self) -> FeedForward:
        return FeedForward(
            self.intermediate_dim,
            activation=self.activation,
            gated=self.gated_feedforward,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="feedforward",
        )

    def _make_norm(self, name: str) -> keras.layers.LayerNormalization:
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def _make_dropout(self, name: str) -> keras.layers.Dropout:
        return keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name=name)

    def _block_input(self, x, norm):
        return norm(x) if self.normalize_first else x

    def _block_output(self, residual, x, norm, dropout, training):
        x = dropout(x, training=training) + residual
        return x if self.normalize_first else norm(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": keras.activations.serialize(self.activation),
                "gated_feedforward": self.gated_feedforward,
                "normalize_first": self.normalize_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "num_key_value_heads": self.num_key_value_heads,
                "use_rotary_embedding": self.use_rotary_embedding,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "sliding_window": self.sliding_window,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
