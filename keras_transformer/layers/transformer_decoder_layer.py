"""One Transformer decoder layer: causal self-attention, cross-attention, feed-forward."""

from __future__ import annotations

import keras

from keras_transformer.layers.transformer_layer_base import TransformerLayerBase
from keras_transformer.layers.validation import ArgumentError, keras_mask_of


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerDecoderLayer(TransformerLayerBase):
    """Causal self-attention, optional cross-attention over an encoder's output, feed-forward.

    The layer has cross-attention when it is first built with an ``encoder_sequence``
    (as in keras-nlp); a decoder-only layer is built without one.

    Incremental decoding: pass ``self_attention_cache`` ``[B, 2, H_kv, S_max, head_dim]``
    and ``cache_index`` (where the new tokens go); the layer then returns
    ``(outputs, updated_self_attention_cache)``. Cross-attention can read a cache made once
    by :meth:`compute_cross_attention_cache`, so ``encoder_sequence`` is not needed per step.

    Args:
        See :class:`TransformerEncoderLayer`; all of them apply.

    Call arguments:
        decoder_sequence: ``[B, T, d]``.
        encoder_sequence: ``[B, S, d_enc]`` or ``None``.
        decoder_padding_mask: ``[B, T]`` (``[B, S_max]`` when caching), defaults to the
            Keras mask of ``decoder_sequence``.
        encoder_padding_mask: ``[B, S]``, defaults to the Keras mask of ``encoder_sequence``.
        decoder_attention_mask: extra self-attention mask broadcastable to ``[B, T, T]``.
        encoder_attention_mask: extra cross-attention mask broadcastable to ``[B, T, S]``.
        use_causal_mask: mask future positions (default ``True``).
        self_attention_cache: ``[B, 2, H_kv, S_max, head_dim]`` or ``None``.
        cross_attention_cache: ``[B, 2, H_kv, S, head_dim]`` or ``None``.
        cache_index: scalar position of the first of the ``T`` new tokens.
        return_attention_scores: also return ``{"self_attention": [B, H, T, S_self],
            "cross_attention": [B, H, T, S]}``.
        training: enables dropout.

    Returns:
        ``outputs``; then the updated self-attention cache if one was given; then the
        attention-scores dict if requested.

    Example:
    >>> layer = TransformerDecoderLayer(num_heads=4, intermediate_dim=64)
    >>> tuple(layer(keras.ops.ones((2, 7, 32)), keras.ops.ones((2, 9, 32))).shape)
    (2, 7, 32)
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        width = self._width(decoder_sequence_shape, "decoder_sequence")
        self.self_attention = self._make_attention(width, "self_attention", self_attention=True)
        self.self_attention.build(decoder_sequence_shape)
        self.self_attention_norm = self._make_norm("self_attention_norm")
        self.self_attention_norm.build(decoder_sequence_shape)
        self.self_attention_dropout = self._make_dropout("self_attention_dropout")
        self.cross_attention = None
        if encoder_sequence_shape is not None:
            self._width(encoder_sequence_shape, "encoder_sequence")
            self.cross_attention = self._make_attention(
                width, "cross_attention", self_attention=False
            )
            self.cross_attention.build(decoder_sequence_shape, encoder_sequence_shape)
            self.cross_attention_norm = self._make_norm("cross_attention_norm")
            self.cross_attention_norm.build(decoder_sequence_shape)
            self.cross_attention_dropout = self._make_dropout("cross_attention_dropout")
        self.feedforward = self._make_feedforward()
        self.feedforward.build(decoder_sequence_shape)
        self.feedforward_norm = self._make_norm("feedforward_norm")
        self.feedforward_norm.build(decoder_sequence_shape)
        self.feedforward_dropout = self._make_dropout("feedforward_dropout")

    @property
    def has_cross_attention(self) -> bool:
        return self.cross_attention is not None

    def compute_cross_attention_cache(self, encoder_sequence):
        """Project the encoder output once for decoding: ``[B, 2, H_kv, S, head_dim]``."""
        if not self.has_cross_attention:
            raise ArgumentError(
                "TransformerDecoderLayer: this layer was built without cross-attention"
            )
        return self.cross_attention.compute_key_value_cache(encoder_sequence)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_attention_mask=None,
        use_causal_mask: bool = True,
        self_attention_cache=None,
        cross_attention_cache=None,
        cache_index=None,
        return_attention_scores: bool = False,
        training=None,
    ):
        has_memory = encoder_sequence is not None or cross_attention_cache is not None
        if has_memory and not self.has_cross_attention:
            raise ArgumentError(
                "TransformerDecoderLayer: got an encoder_sequence or cross_attention_cache, "
                "but this layer was built without cross-attention"
            )
        if self.has_cross_attention and not has_memory:
            raise ArgumentError(
                "TransformerDecoderLayer: this layer has cross-attention and needs "
                "encoder_sequence or cross_attention_cache"
            )
        if self_attention_cache is not None and cache_index is None:
            raise ArgumentError("TransformerDecoderLayer: self_attention_cache needs cache_index")
        if decoder_padding_mask is None and self_attention_cache is None:
            decoder_padding_mask = keras_mask_of(decoder_sequence)
        if encoder_padding_mask is None:
            encoder_padding_mask = keras_mask_of(encoder_sequence)
        scores, caches = {}, []

        def attend_self(x):
            outputs = self.self_attention(
                x,
                attention_mask=decoder_attention_mask,
                key_padding_mask=decoder_padding_mask,
                use_causal_mask=use_causal_mask,
                cache=self_attention_cache,
                cache_index=cache_index,
                return_attention_scores=True,
                training=training,
            )
            scores["self_attention"] = outputs[1]
            caches.extend(outputs[2:])
            return outputs[0]

        def attend_memory(x):
            outputs = self.cross_attention(
                x,
                encoder_sequence,
                attention_mask=encoder_attention_mask,
                key_padding_mask=encoder_padding_mask,
                cache=cross_attention_cache,
                return_attention_scores=True,
                training=training,
            )
            scores["cross_attention"] = outputs[1]
            return outputs[0]

        x = self._blocks(decoder_sequence, attend_self, attend_memory, training)
        results = (x, *caches)
        if return_attention_scores:
            results += (scores,)
        return results[0] if len(results) == 1 else results

    def decode_step(
        self,
        decoder_sequence,
        key_cache,
        value_cache,
        cache_index,
        cross_key_cache=None,
        cross_value_cache=None,
        encoder_padding_mask=None,
    ):
        """One token through the layer with read-only caches (the device export's decode).

        Args:
            decoder_sequence: ``[B, 1, d]``, the token at ``cache_index``.
            key_cache, value_cache: the self-attention cache, ``[B, H_kv, S_max, head_dim]``
                and value-major ``[B, H_kv, head_dim, S_max]``; slots before ``cache_index``
                hold the earlier tokens.
            cross_key_cache, cross_value_cache: the projected encoder memory in the same two
                layouts (length ``S``), for a layer with cross-attention.
            encoder_padding_mask: ``[B, S]``.

        Returns ``(outputs [B, 1, d], new_key, new_value)``: the token's own self-attention
        entry ``[B, H_kv, 1, head_dim]`` each, to be stored at ``cache_index``.
        """
        if self.has_cross_attention and cross_key_cache is None:
            raise ArgumentError(
                "TransformerDecoderLayer.decode_step: this layer has cross-attention and needs "
                "cross_key_cache and cross_value_cache"
            )
        entry = []

        def attend_self(x):
            output, key, value = self.self_attention.decode_step(
                x, key_cache, value_cache, cache_index
            )
            entry.extend((key, value))
            return output

        def attend_memory(x):
            return self.cross_attention.decode_step(
                x, cross_key_cache, cross_value_cache, key_padding_mask=encoder_padding_mask
            )

        x = self._blocks(decoder_sequence, attend_self, attend_memory, training=False)
        return x, entry[0], entry[1]

    def _blocks(self, decoder_sequence, attend_self, attend_memory, training):
        """The residual blocks around the two attentions (each takes its normalized input)."""
        x = self._block_input(decoder_sequence, self.self_attention_norm)
        x = self._block_output(
            decoder_sequence,
            attend_self(x),
            self.self_attention_norm,
            self.self_attention_dropout,
            training,
        )
        if self.has_cross_attention:
            residual = x
            x = attend_memory(self._block_input(x, self.cross_attention_norm))
            x = self._block_output(
                residual, x, self.cross_attention_norm, self.cross_attention_dropout, training
            )
        residual = x
        x = self.feedforward(self._block_input(x, self.feedforward_norm), training=training)
        return self._block_output(
            residual, x, self.feedforward_norm, self.feedforward_dropout, training
        )

    def compute_output_shape(self, decoder_sequence_shape, encoder_sequence_shape=None):
        return decoder_sequence_shape
