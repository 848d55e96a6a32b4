"""Encoder-only models: a sequence classifier and a token classifier (tagger, NER)."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers import TransformerEncoder
from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models.model_base import TransformerModelBase, check_token_ids

POOLINGS = ("mean", "max", "first")


class _EncoderModel(TransformerModelBase):
    """Token embedding and an encoder stack; subclasses add their head."""

    def __init__(self, vocabulary_size: int, sequence_length: int, num_layers: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.num_layers = num_layers
        self.embedding = self._make_embedding(vocabulary_size, sequence_length, "embedding")
        self.encoder = TransformerEncoder(num_layers, **self._layer_kwargs(), name="encoder")

    def _build_backbone(self):
        shape = (None, self.sequence_length)
        self.embedding.build(shape)
        self.encoder.build(shape + (self.hidden_dim,))
        return shape + (self.hidden_dim,)

    def encode(self, token_ids, training=None):
        """``(encoder_output [B, T, d], padding_mask [B, T])``."""
        check_token_ids(type(self).__name__, "token_ids", token_ids, self.sequence_length)
        padding_mask = ops.not_equal(token_ids, 0)
        x = self.embedding(token_ids, training=training)
        return self.encoder(x, padding_mask=padding_mask, training=training), padding_mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "num_layers": self.num_layers,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class SequenceClassifier(_EncoderModel):
    """Encoder, masked pooling, dropout and a linear layer: class logits ``[B, C]``.

    Args:
        vocabulary_size, sequence_length, num_layers: as for the encoder.
        num_classes: number of classes.
        pooling: ``"mean"`` or ``"max"`` over real tokens, or ``"first"`` (a [CLS] token).
        **kwargs: the Transformer settings of ``TransformerModelBase``.

    Call arguments:
        token_ids: ``[B, T]`` int, 0 = padding.

    Example:
    >>> model = SequenceClassifier(100, 16, num_classes=3, hidden_dim=32, num_heads=4,
    ...                            intermediate_dim=64)
    >>> tuple(model(keras.ops.ones((2, 16), "int32")).shape)
    (2, 3)
    """

    def __init__(
        self,
        vocabulary_size: int,
        sequence_length: int,
        num_classes: int,
        pooling: str = "mean",
        **kwargs,
    ):
        super().__init__(vocabulary_size, sequence_length, **kwargs)
        if pooling not in POOLINGS:
            raise ArgumentError(
                f"SequenceClassifier: pooling must be one of {POOLINGS}, got {pooling!r}"
            )
        self.num_classes = num_classes
        self.pooling = pooling
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout")
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, inputs_shape=None):
        self.classifier.build((None, self._build_backbone()[-1]))
        self.built = True

    def call(self, token_ids, training=None):
        x, padding_mask = self.encode(token_ids, training=training)
        mask = ops.cast(ops.expand_dims(padding_mask, -1), x.dtype)
        if self.pooling == "mean":
            pooled = ops.sum(x * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)
        elif self.pooling == "max":
            pooled = ops.max(ops.where(mask > 0, x, ops.cast(-1e9, x.dtype)), axis=1)
        else:
            pooled = x[:, 0]
        return self.classifier(self.head_dropout(pooled, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "pooling": self.pooling})
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenClassifier(_EncoderModel):
    """Encoder and a per-token linear layer: tag logits ``[B, T, num_tags]`` (NER, POS).

    Args:
        vocabulary_size, sequence_length, num_layers: as for the encoder.
        num_tags: number of tags.
        **kwargs: the Transformer settings of ``TransformerModelBase``.

    Call arguments:
        token_ids: ``[B, T]`` int, 0 = padding.

    Example:
    >>> model = TokenClassifier(100, 16, num_tags=5, hidden_dim=32, num_heads=4,
    ...                         intermediate_dim=64)
    >>> tuple(model(keras.ops.ones((2, 16), "int32")).shape)
    (2, 16, 5)
    """

    def __init__(self, vocabulary_size: int, sequence_length: int, num_tags: int, **kwargs):
        super().__init__(vocabulary_size, sequence_length, **kwargs)
        self.num_tags = num_tags
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout")
        self.tagger = keras.layers.Dense(num_tags, name="tagger")

    def build(self, inputs_shape=None):
        self.tagger.build(self._build_backbone())
        self.built = True

    def call(self, token_ids, training=None):
        x, _ = self.encode(token_ids, training=training)
        return self.tagger(self.head_dropout(x, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"num_tags": self.num_tags})
        return config
