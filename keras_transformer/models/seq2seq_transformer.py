"""Encoder-decoder Transformer for translation and summarization."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers import TransformerDecoder, TransformerEncoder
from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models.model_base import (
    TiedOrDenseLogits,
    TransformerModelBase,
    check_token_ids,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class Seq2SeqTransformer(TransformerModelBase):
    """The "Attention Is All You Need" encoder-decoder, trainable with ``fit``.

    Token id 0 is padding on both sides. The decoder input is the target shifted right
    (starting with a start token); the output is next-token logits ``[B, T, V_dec]``.

    Args:
        encoder_vocabulary_size, decoder_vocabulary_size: vocabulary sizes.
        encoder_sequence_length, decoder_sequence_length: maximum lengths.
        num_encoder_layers, num_decoder_layers: stack depths.
        tie_output_embeddings: compute logits with the decoder's token embedding.
        **kwargs: the Transformer settings of ``TransformerModelBase`` (``hidden_dim``,
            ``num_heads``, ``intermediate_dim``, ``dropout``, ``activation``,
            ``normalize_first``, ``num_key_value_heads``, ``position_encoding``, ...).

    Call arguments:
        inputs: dict with ``"encoder_token_ids"`` ``[B, S]`` and ``"decoder_token_ids"``
            ``[B, T]`` (int).

    Incremental decoding: ``encode`` once, ``cross_attention_cache`` once, then
    ``decode`` one token (or a prefix) at a time against a cache from ``init_cache``.

    Example:
    >>> model = Seq2SeqTransformer(100, 100, 16, 16, hidden_dim=32, num_heads=4,
    ...                            intermediate_dim=64)
    >>> ids = keras.ops.ones((2, 16), "int32")
    >>> tuple(model({"encoder_token_ids": ids, "decoder_token_ids": ids}).shape)
    (2, 16, 100)
    """

    def __init__(
        self,
        encoder_vocabulary_size: int,
        decoder_vocabulary_size: int,
        encoder_sequence_length: int,
        decoder_sequence_length: int,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        tie_output_embeddings: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder_vocabulary_size = encoder_vocabulary_size
        self.decoder_vocabulary_size = decoder_vocabulary_size
        self.encoder_sequence_length = encoder_sequence_length
        self.decoder_sequence_length = decoder_sequence_length
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.tie_output_embeddings = tie_output_embeddings

        self.encoder_embedding = self._make_embedding(
            encoder_vocabulary_size, encoder_sequence_length, "encoder_embedding"
        )
        self.decoder_embedding = self._make_embedding(
            decoder_vocabulary_size, decoder_sequence_length, "decoder_embedding"
        )
        self.encoder = TransformerEncoder(
            num_encoder_layers, **self._layer_kwargs(), name="encoder"
        )
        self.decoder = TransformerDecoder(
            num_decoder_layers, **self._layer_kwargs(), name="decoder"
        )
        self.output_head = TiedOrDenseLogits(
            decoder_vocabulary_size,
            self.decoder_embedding.token_embedding if tie_output_embeddings else None,
            name="output_head",
        )

    def build(self, inputs_shape=None):
        encoder_shape = (None, self.encoder_sequence_length)
        decoder_shape = (None, self.decoder_sequence_length)
        self.encoder_embedding.build(encoder_shape)
        self.decoder_embedding.build(decoder_shape)
        self.encoder.build(encoder_shape + (self.hidden_dim,))
        self.decoder.build(decoder_shape + (self.hidden_dim,), encoder_shape + (self.hidden_dim,))
        self.output_head.build(decoder_shape + (self.hidden_dim,))
        self.built = True

    def _ids(self, inputs, key):
        if not isinstance(inputs, dict) or key not in inputs:
            raise ArgumentError(
                "Seq2SeqTransformer: inputs must be a dict with 'encoder_token_ids' and "
                f"'decoder_token_ids', got {type(inputs).__name__}"
                + (f" with keys {sorted(inputs)}" if isinstance(inputs, dict) else "")
            )
        return inputs[key]

    def call(self, inputs, training=None):
        encoder_ids = self._ids(inputs, "encoder_token_ids")
        decoder_ids = self._ids(inputs, "decoder_token_ids")
        encoder_output, encoder_padding_mask = self.encode(encoder_ids, training=training)
        x = self.decoder_embedding(decoder_ids, training=training)
        x = self.decoder(
            x,
            encoder_output,
            decoder_padding_mask=ops.not_equal(decoder_ids, 0),
            encoder_padding_mask=encoder_padding_mask,
            training=training,
        )
        return self.output_head(x)

    def encode(self, encoder_token_ids, training=None):
        """``(encoder_output [B, S, d], encoder_padding_mask [B, S])``."""
        check_token_ids(
            "Seq2SeqTransformer",
            "encoder_token_ids",
            encoder_token_ids,
            self.encoder_sequence_length,
        )
        self.ensure_built()
        padding_mask = ops.not_equal(encoder_token_ids, 0)
        x = self.encoder_embedding(encoder_token_ids, training=training)
        return self.encoder(x, padding_mask=padding_mask, training=training), padding_mask

    def cross_attention_cache(self, encoder_output):
        """The decoder's projected encoder memory, ``[B, L, 2, H_kv, S, head_dim]``."""
        return self.decoder.compute_cross_attention_cache(encoder_output)

    def init_cache(self, batch_size: int, max_length: int | None = None):
        """A zero self-attention cache ``[B, L, 2, H_kv, max_length, head_dim]``."""
        self.ensure_built()
        return self.decoder.init_cache(batch_size, max_length or self.decoder_sequence_length)

    def decode(
        self,
        decoder_token_ids,
        cache,
        cache_index,
        cross_attention_cache,
        encoder_padding_mask,
        return_attention_scores=False,
    ):
        """Logits for ``T`` new target tokens at ``cache_index`` (``T = 1`` per step).

        Returns ``(logits [B, T, V], updated cache)`` (and the per-layer scores if asked).
        """
        x = self.decoder_embedding(decoder_token_ids, start_index=cache_index)
        outputs = self.decoder(
            x,
            encoder_padding_mask=encoder_padding_mask,
            self_attention_cache=cache,
            cross_attention_cache=cross_attention_cache,
            cache_index=cache_index,
            return_attention_scores=return_attention_scores,
        )
        return (self.output_head(outputs[0]),) + tuple(outputs[1:])

    def decode_step(self, decoder_token_ids, caches, cache_index, encoder_padding_mask):
        """Logits ``[B, 1, V]`` for one target token at ``cache_index`` against read-only
        per-layer caches (``decoder.split_caches`` lays them out), and every layer's new
        key and value ``[B, L, 2, H_kv, head_dim]`` for the caller to store at
        ``cache_index``: the same logits as :meth:`decode` for a real token, and the device
        export's ``decode`` (no cache copied through the graph). A padding id (0) is not a
        token to decode: its own key stays visible here, where a teacher-forced call masks it."""
        x = self.decoder_embedding(decoder_token_ids, start_index=cache_index)
        x, entries = self.decoder.decode_step(x, caches, cache_index, encoder_padding_mask)
        return self.output_head(x), entries

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder_vocabulary_size": self.encoder_vocabulary_size,
                "decoder_vocabulary_size": self.decoder_vocabulary_size,
                "encoder_sequence_length": self.encoder_sequence_length,
                "decoder_sequence_length": self.decoder_sequence_length,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "tie_output_embeddings": self.tie_output_embeddings,
            }
        )
        return config
