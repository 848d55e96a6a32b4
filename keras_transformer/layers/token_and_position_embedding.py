"""Token embedding plus a position signal: the input layer of every model here."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.position_embedding import PositionEmbedding
from keras_transformer.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from keras_transformer.layers.validation import ArgumentError

POSITION_ENCODINGS = ("learned", "sinusoidal", "none")


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """``dropout(scale * E[token] + P[position])`` with a Keras padding mask.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: maximum length (size of a learned position table).
        embedding_dim: width ``d``.
        position_encoding: ``"learned"``, ``"sinusoidal"``, or ``"none"`` (use ``"none"``
            with rotary attention).
        mask_zero: emit a Keras mask that is ``False`` where the token id is ``padding_id``
            (which must then be 0, as Keras masks only id 0).
        scale_embeddings: multiply token embeddings by ``sqrt(d)`` (as in the paper).
        dropout: dropout on the sum during training.
        embeddings_initializer: initializer of the token table.

    Call arguments:
        token_ids: ``[B, T]`` int.
        start_index: absolute position of the first token (for cached decoding).
        training: enables dropout.

    Example:
    >>> embed = TokenAndPositionEmbedding(100, 16, 32, position_encoding="sinusoidal")
    >>> tuple(embed(keras.ops.array([[5, 6, 0]])).shape)
    (1, 3, 32)
    """

    def __init__(
        self,
        vocabulary_size: int,
        sequence_length: int,
        embedding_dim: int,
        position_encoding: str = "learned",
        mask_zero: bool = True,
        scale_embeddings: bool = False,
        dropout: float = 0.0,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_encoding not in POSITION_ENCODINGS:
            raise ArgumentError(
                f"TokenAndPositionEmbedding: position_encoding must be one of "
                f"{POSITION_ENCODINGS}, got {position_encoding!r}"
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.position_encoding = position_encoding
        self.mask_zero = mask_zero
        self.scale_embeddings = scale_embeddings
        self.dropout = dropout
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.supports_masking = True
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            mask_zero=mask_zero,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_layer = {
            "learned": lambda: PositionEmbedding(
                sequence_length, dtype=self.dtype_policy, name="position_embedding"
            ),
            "sinusoidal": lambda: SinusoidalPositionEncoding(
                dtype=self.dtype_policy, name="position_encoding"
            ),
            "none": lambda: None,
        }[position_encoding]()
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, token_ids_shape):
        self.token_embedding.build(token_ids_shape)
        if self.position_layer is not None:
            self.position_layer.build(tuple(token_ids_shape) + (self.embedding_dim,))

    def call(self, token_ids, start_index=0, training=None):
        length = token_ids.shape[1]
        if length is not None and length > self.sequence_length:
            raise ArgumentError(
                f"TokenAndPositionEmbedding: token_ids of shape {tuple(token_ids.shape)} are "
                f"longer than sequence_length={self.sequence_length}"
            )
        x = self.token_embedding(token_ids)
        if self.scale_embeddings:
            x = x * ops.cast(self.embedding_dim**0.5, x.dtype)
        if self.position_layer is not None:
            x = x + self.position_layer(x, start_index=start_index)
        return self.dropout_layer(x, training=training)

    def compute_mask(self, token_ids, mask=None):
        return ops.not_equal(token_ids, 0) if self.mask_zero else None

    def compute_output_shape(self, token_ids_shape):
        return tuple(token_ids_shape) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "position_encoding": self.position_encoding,
                "mask_zero": self.mask_zero,
                "scale_embeddings": self.scale_embeddings,
                "dropout": self.dropout,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
