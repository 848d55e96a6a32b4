"""Decoder-only (GPT-style) language model."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers import TransformerDecoder
from keras_transformer.models.model_base import (
    TiedOrDenseLogits,
    TransformerModelBase,
    check_token_ids,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerLanguageModel(TransformerModelBase):
    """A causal decoder stack (no cross-attention) predicting the next token.

    Defaults follow current practice rather than the 2017 paper: pre-LN, rotary positions,
    GELU, output logits tied to the token embedding. Token id 0 is padding.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: maximum context length (and KV-cache size).
        num_layers: decoder layers.
        tie_output_embeddings: logits from the token embedding (``x E^T``); the same name
            as ``Seq2SeqTransformer``'s (models saved with the old ``tie_embeddings`` load).
        **kwargs: the Transformer settings of ``TransformerModelBase``.

    Call arguments:
        token_ids: ``[B, T]`` int.

    Incremental decoding: ``init_cache`` then ``call_with_cache`` on the prompt
    (``cache_index=0``, the prefill) and on one token at a time.

    Example:
    >>> lm = TransformerLanguageModel(100, 32, num_layers=2, hidden_dim=32, num_heads=4,
    ...                               intermediate_dim=64, num_key_value_heads=2)
    >>> tuple(lm(keras.ops.ones((2, 10), "int32")).shape)
    (2, 10, 100)
    """

    def __init__(
        self,
        vocabulary_size: int,
        sequence_length: int,
        num_layers: int = 2,
        tie_output_embeddings: bool = True,
        normalize_first: bool = True,
        position_encoding: str = "rotary",
        activation: str = "gelu",
        **kwargs,
    ):
        super().__init__(
            normalize_first=normalize_first,
            position_encoding=position_encoding,
            activation=activation,
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.num_layers = num_layers
        self.tie_output_embeddings = tie_output_embeddings
        self.embedding = self._make_embedding(vocabulary_size, sequence_length, "embedding")
        self.decoder = TransformerDecoder(num_layers, **self._layer_kwargs(), name="decoder")
        self.output_head = TiedOrDenseLogits(
            vocabulary_size,
            self.embedding.token_embedding if tie_output_embeddings else None,
            name="output_head",
        )

    def build(self, inputs_shape=None):
        shape = (None, self.sequence_length)
        self.embedding.build(shape)
        self.decoder.build(shape + (self.hidden_dim,))
        self.output_head.build(shape + (self.hidden_dim,))
        self.built = True

    def call(self, token_ids, training=None):
        check_token_ids("TransformerLanguageModel", "token_ids", token_ids, self.sequence_length)
        x = self.embedding(token_ids, training=training)
        x = self.decoder(x, decoder_padding_mask=ops.not_equal(token_ids, 0), training=training)
        return self.output_head(x)

    def init_cache(self, batch_size: int, max_length: int | None = None):
        """A zero cache ``[B, L, 2, H_kv, max_length, head_dim]``."""
        self.ensure_built()
        return self.decoder.init_cache(batch_size, max_length or self.sequence_length)

    def call_with_cache(
        self, token_ids, cache, cache_index, padding_mask=None, return_attention_scores=False
    ):
        """Logits for ``T`` tokens written at ``cache_index``: ``(logits, updated cache)``.

        ``padding_mask`` ``[B, S_max]`` hides cache slots (e.g. left padding of prompts).
        """
        x = self.embedding(token_ids, start_index=cache_index)
        outputs = self.decoder(
            x,
            decoder_padding_mask=padding_mask,
            self_attention_cache=cache,
            cache_index=cache_index,
            return_attention_scores=return_attention_scores,
        )
        return (self.output_head(outputs[0]),) + tuple(outputs[1:])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "num_layers": self.num_layers,
                "tie_output_embeddings": self.tie_output_embeddings,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "tie_embeddings" in config:  # the argument's name before version 0.2
            config["tie_output_embeddings"] = config.pop("tie_embeddings")
        return super().from_config(config)
