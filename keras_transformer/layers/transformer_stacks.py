"""Encoder and decoder stacks: N layers, plus a final LayerNorm for pre-LN stacks."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.transformer_decoder_layer import TransformerDecoderLayer
from keras_transformer.layers.transformer_encoder_layer import TransformerEncoderLayer
from keras_transformer.layers.validation import ArgumentError, keras_mask_of


class _Stack(keras.layers.Layer):
    """Holds ``num_layers`` layers built from one set of per-layer arguments."""

    layer_class: type = None

    def __init__(self, num_layers: int, **layer_kwargs):
        base_kwargs = {
            key: layer_kwargs.pop(key)
            for key in ("name", "dtype", "trainable")
            if key in layer_kwargs
        }
        super().__init__(**base_kwargs)
        if num_layers < 1:
            raise ArgumentError(f"{type(self).__name__}: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.layer_kwargs = layer_kwargs
        self.supports_masking = True
        self.layers = [
            self.layer_class(**layer_kwargs, dtype=self.dtype_policy, name=f"layer_{index}")
            for index in range(num_layers)
        ]
        self.normalize_first = self.layers[0].normalize_first
        # Pre-LN stacks end with a LayerNorm: their residual stream is never normalized inside.
        self.final_norm = (
            keras.layers.LayerNormalization(
                epsilon=self.layers[0].layer_norm_epsilon,
                dtype=self.dtype_policy,
                name="final_norm",
            )
            if self.normalize_first
            else None
        )

    def _finish(self, x):
        return self.final_norm(x) if self.final_norm is not None else x

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_layers": self.num_layers, **self.layers[0].get_config()})
        for key in ("name", "dtype", "trainable"):
            config[key] = super().get_config()[key]
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerEncoder(_Stack):
    """A stack of :class:`TransformerEncoderLayer`.

    Args:
        num_layers: number of layers.
        **layer_kwargs: arguments of :class:`TransformerEncoderLayer` (``num_heads``,
            ``intermediate_dim``, ``dropout``, ``normalize_first``, ...), the same for
            every layer.

    Call arguments:
        inputs: ``[B, T, d]``.
        padding_mask: ``[B, T]``; defaults to the inputs' Keras mask.
        attention_mask: broadcastable to ``[B, T, T]``.
        return_attention_scores: also return a list of ``[B, H, T, T]``, one per layer.
        training: enables dropout.

    Example:
    >>> encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=64)
    >>> tuple(encoder(keras.ops.ones((2, 10, 32))).shape)
    (2, 10, 32)
    """

    layer_class = TransformerEncoderLayer

    def build(self, inputs_shape):
        for layer in self.layers:
            layer.build(inputs_shape)
        if self.final_norm is not None:
            self.final_norm.build(inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        if padding_mask is None:
            padding_mask = keras_mask_of(inputs)
        x, all_scores = inputs, []
        for layer in self.layers:
            x, scores = layer(
                x,
                padding_mask=padding_mask,
                attention_mask=attention_mask,
                return_attention_scores=True,
                training=training,
            )
            all_scores.append(scores)
        x = self._finish(x)
        return (x, all_scores) if return_attention_scores else x


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerDecoder(_Stack):
    """A stack of :class:`TransformerDecoderLayer`, with a KV cache for the whole stack.

    The caches of all layers travel as one tensor each, so that a decoding step has a
    fixed, small signature: the self-attention cache ``[B, L, 2, H_kv, S_max, head_dim]``
    and the cross-attention cache ``[B, L, 2, H_kv, S, head_dim]``.

    Args:
        num_layers: number of layers.
        **layer_kwargs: arguments of :class:`TransformerDecoderLayer`.

    Call arguments:
        decoder_sequence, encoder_sequence, decoder_padding_mask, encoder_padding_mask,
        decoder_attention_mask, encoder_attention_mask, use_causal_mask,
        return_attention_scores, training: as in :class:`TransformerDecoderLayer`.
        self_attention_cache: ``[B, L, 2, H_kv, S_max, head_dim]`` or ``None``.
        cross_attention_cache: ``[B, L, 2, H_kv, S, head_dim]`` or ``None``.
        cache_index: scalar position of the first new token.

    Returns:
        ``outputs``; then the updated self-attention cache if one was given; then a list
        of per-layer attention-score dicts if requested.

    Example:
    >>> decoder = TransformerDecoder(num_layers=2, num_heads=4, intermediate_dim=64)
    >>> tuple(decoder(keras.ops.ones((2, 7, 32)), keras.ops.ones((2, 9, 32))).shape)
    (2, 7, 32)
    """

    layer_class = TransformerDecoderLayer

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        for layer in self.layers:
            layer.build(decoder_sequence_shape, encoder_sequence_shape)
        if self.final_norm is not None:
            self.final_norm.build(decoder_sequence_shape)

    def init_cache(self, batch_size: int, max_length: int, dtype=None):
        """A zero self-attention cache ``[B, L, 2, H_kv, max_length, head_dim]``."""
        attention = self.layers[0].self_attention
        return ops.zeros(
            (
                batch_size,
                self.num_layers,
                2,
                attention.num_key_value_heads,
                max_length,
                attention.key_dim,
            ),
            dtype=dtype or self.compute_dtype,
        )

    def compute_cross_attention_cache(self, encoder_sequence):
        """Every layer's projected encoder memory: ``[B, L, 2, H_kv, S, head_dim]``."""
        return ops.stack(
            [layer.compute_cross_attention_cache(encoder_sequence) for layer in self.layers], axis=1
        )

    def split_caches(self, self_attention_cache, cross_attention_cache=None) -> list[tuple]:
        """Packed caches (``[B, L, 2, H_kv, S, head_dim]``) as :meth:`decode_step` takes them:
        per layer ``(keys, values, cross_keys, cross_values)``, keys ``[B, H_kv, S, D]`` and
        values value-major ``[B, H_kv, D, S]`` (``None`` for a missing cross cache)."""

        def layer_entries(cache, index):
            if cache is None:
                return None, None
            return cache[:, index, 0], ops.swapaxes(cache[:, index, 1], -1, -2)

        return [
            layer_entries(self_attention_cache, index) + layer_entries(cross_attention_cache, index)
            for index in range(self.num_layers)
        ]

    def decode_step(self, decoder_sequence, caches, cache_index, encoder_padding_mask=None):
        """One token through the stack with read-only caches (the device export's decode).

        Args:
            decoder_sequence: ``[B, 1, d]``, the token at ``cache_index``.
            caches: per layer ``(keys, values, cross_keys, cross_values)`` as
                :meth:`split_caches` lays them out.
            cache_index: the token's position.
            encoder_padding_mask: ``[B, S]``.

        Returns ``(outputs [B, 1, d], entries [B, L, 2, H_kv, head_dim])``: every layer's
        new key and value, to be stored at ``cache_index`` of its caches.
        """
        if len(caches) != self.num_layers:
            raise ArgumentError(
                f"TransformerDecoder.decode_step: {len(caches)} layer caches for "
                f"{self.num_layers} layers"
            )
        x, entries = decoder_sequence, []
        for layer, (keys, values, cross_keys, cross_values) in zip(self.layers, caches):
            x, key, value = layer.decode_step(
                x, keys, values, cache_index, cross_keys, cross_values, encoder_padding_mask
            )
            # [B, H_kv, 1, D] each -> [B, 1, 2, H_kv, D]: reshapes and one concatenation
            # (TFLite's XNNPACK delegate runs both; not PACK).
            entries += [ops.expand_dims(ops.swapaxes(key, 1, 2), 1)]
            entries += [ops.expand_dims(ops.swapaxes(value, 1, 2), 1)]
        entries = ops.concatenate(entries, axis=2)  # [B, 1, 2L, H_kv, D]
        shape = ops.shape(entries)
        return self._finish(x), ops.reshape(
            entries, (shape[0], self.num_layers, 2, shape[3], shape[4])
        )

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
        if decoder_padding_mask is None and self_attention_cache is None:
            decoder_padding_mask = keras_mask_of(decoder_sequence)
        if encoder_padding_mask is None:
            encoder_padding_mask = keras_mask_of(encoder_sequence)
        x, new_caches, all_scores = decoder_sequence, [], []
        # Unstacked per layer rather than indexed: TFLite's strided slice (and so its
        # calibrator, for full-integer quantization) stops at 5-D, the cache is 6-D.
        layer_caches = [
            None if cache is None else ops.unstack(cache, len(self.layers), axis=1)
            for cache in (self_attention_cache, cross_attention_cache)
        ]
        for index, layer in enumerate(self.layers):
            outputs = layer(
                x,
                encoder_sequence,
                decoder_padding_mask=decoder_padding_mask,
                encoder_padding_mask=encoder_padding_mask,
                decoder_attention_mask=decoder_attention_mask,
                encoder_attention_mask=encoder_attention_mask,
                use_causal_mask=use_causal_mask,
                self_attention_cache=layer_caches[0] and layer_caches[0][index],
                cross_attention_cache=layer_caches[1] and layer_caches[1][index],
                cache_index=cache_index,
                return_attention_scores=True,
                training=training,
            )
            x, all_scores = outputs[0], all_scores + [outputs[-1]]
            if self_attention_cache is not None:
                new_caches.append(outputs[1])
        x = self._finish(x)
        results = (x,)
        if self_attention_cache is not None:
            results += (ops.stack(new_caches, axis=1),)
        if return_attention_scores:
            results += (all_scores,)
        return results[0] if len(results) == 1 else results
