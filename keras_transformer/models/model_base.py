"""Pieces the models share: the Transformer settings, the embedding, the output head."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers import TokenAndPositionEmbedding
from keras_transformer.layers.validation import ArgumentError


class TransformerModelBase(keras.Model):
    """Holds the hyper-parameters every model here accepts and serializes them.

    Subclasses call :meth:`_layer_kwargs` to configure their encoder or decoder stacks and
    :meth:`_make_embedding` for token embeddings. ``position_encoding="rotary"`` puts the
    positions inside attention and none in the embedding.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_heads: int = 4,
        intermediate_dim: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        gated_feedforward: bool = False,
        normalize_first: bool = False,
        layer_norm_epsilon: float = 1e-5,
        num_key_value_heads: int | None = None,
        position_encoding: str = "sinusoidal",
        scale_embeddings: bool = False,
        sliding_window: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_encoding not in ("learned", "sinusoidal", "rotary", "none"):
            raise ArgumentError(
                f"{type(self).__name__}: position_encoding must be 'learned', 'sinusoidal', "
                f"'rotary' or 'none', got {position_encoding!r}"
            )
        if hidden_dim % num_heads:
            raise ArgumentError(
                f"{type(self).__name__}: num_heads={num_heads} must divide hidden_dim={hidden_dim}"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.gated_feedforward = gated_feedforward
        self.normalize_first = normalize_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_key_value_heads = num_key_value_heads
        self.position_encoding = position_encoding
        self.scale_embeddings = scale_embeddings
        self.sliding_window = sliding_window

    def ensure_built(self) -> None:
        """Build from the model's own configuration (needed before the cached-decoding API
        is used on a model that has not been called yet)."""
        if not self.built:
            self.build()

    def _layer_kwargs(self) -> dict:
        return dict(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            gated_feedforward=self.gated_feedforward,
            normalize_first=self.normalize_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
            num_key_value_heads=self.num_key_value_heads,
            use_rotary_embedding=self.position_encoding == "rotary",
            sliding_window=self.sliding_window,
        )

    def _make_embedding(self, vocabulary_size: int, sequence_length: int, name: str):
        return TokenAndPositionEmbedding(
            vocabulary_size,
            sequence_length,
            self.hidden_dim,
            position_encoding="none"
            if self.position_encoding == "rotary"
            else self.position_encoding,
            mask_zero=True,
            scale_embeddings=self.scale_embeddings,
            dropout=self.dropout,
            name=name,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": self.activation,
                "gated_feedforward": self.gated_feedforward,
                "normalize_first": self.normalize_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "num_key_value_heads": self.num_key_value_heads,
                "position_encoding": self.position_encoding,
                "scale_embeddings": self.scale_embeddings,
                "sliding_window": self.sliding_window,
            }
        )
        return config


class TiedOrDenseLogits(keras.layers.Layer):
    """Vocabulary logits: ``x E^T`` with the token embedding ``E`` (tied) or a Dense layer."""

    def __init__(self, vocabulary_size: int, embedding=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.embedding = embedding
        # The padding mask flows on to the logits, so Keras losses and metrics skip padding.
        self.supports_masking = True
        self.dense = (
            None
            if embedding is not None
            else keras.layers.Dense(vocabulary_size, dtype=self.dtype_policy, name="dense")
        )

    def build(self, inputs_shape):
        if self.dense is not None:
            self.dense.build(inputs_shape)

    def call(self, inputs):
        if self.dense is not None:
            logits = self.dense(inputs)
        else:
            embeddings = ops.cast(self.embedding.embeddings, inputs.dtype)
            logits = ops.matmul(inputs, ops.transpose(embeddings))
        # float32 logits under mixed precision: the softmax over the vocabulary and the loss
        # lose too much in float16.
        return ops.cast(logits, "float32")

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.vocabulary_size,)


def check_token_ids(owner: str, argument: str, token_ids, max_length: int) -> None:
    """One-line errors for token-id inputs of the wrong rank or length."""
    shape = tuple(token_ids.shape)
    if len(shape) != 2:
        raise ArgumentError(
            f"{owner}: `{argument}` must be [batch, length] token ids, got shape {shape}"
        )
    if shape[1] is not None and shape[1] > max_length:
        raise ArgumentError(
            f"{owner}: `{argument}` of shape {shape} is longer than the model's maximum "
            f"length {max_length}"
        )
