"""Multi-head attention: self and cross, grouped-query heads, rotary positions, KV cache."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.attention_layout import (
    check_cache_shape,
    checked_attention_mask,
    split_heads,
    to_heads,
)
from keras_transformer.layers.masks import attention_mask_for, merge_masks, slots_before
from keras_transformer.layers.quantization_points import point_function, quantization_point
from keras_transformer.layers.rotary_embedding import RotaryEmbedding
from keras_transformer.layers.scaled_dot_product_attention import (
    attend,
    attend_memory_step,
    attend_step,
)
from keras_transformer.layers.validation import (
    ArgumentError,
    check_rank,
    clone_initializer,
    keras_mask_of,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with fused projections and a fixed-size KV cache.

    Self-attention (``value`` omitted, or the same tensor as ``query``) projects queries,
    keys and values with one matmul; cross-attention projects the query with one matmul and
    keys and values with another. The weights are the same in both cases: a query kernel
    ``[d_query, H * key_dim]`` and a key/value kernel ``[d_value, H_kv * (key_dim + value_dim)]``.

    Incremental decoding uses a cache tensor of static shape ``[B, 2, H_kv, S_max, key_dim]``
    (keys, then values). A call with ``cache`` and ``cache_index`` writes the ``T`` new keys
    and values at ``cache_index`` with a slice update and attends over all ``S_max`` slots;
    slots not yet written are hidden by the causal mask. Prefill (``T`` = prompt length,
    ``cache_index=0``) and one-token steps (``T = 1``) run the same graph.

    Args:
        num_heads: number of query heads ``H``.
        key_dim: depth of each query/key head.
        value_dim: depth of each value head; defaults to ``key_dim``.
        num_key_value_heads: key/value heads ``H_kv`` (divides ``num_heads``); fewer than
            ``num_heads`` is grouped-query attention, 1 is multi-query attention.
        output_dim: width of the output; defaults to the query's width.
        dropout: dropout rate on the attention weights during training.
        use_bias: whether projections have biases.
        use_rotary_embedding: rotate queries and keys by position (self-attention only).
        rotary_max_wavelength: base of the rotary frequencies.
        sliding_window: if set, each query attends only to keys within this many positions
            (causal window when a causal mask is used, symmetric otherwise).
        kernel_initializer, bias_initializer: initializers of the projections.

    Call arguments:
        query: ``[B, T, d_query]``.
        value: ``[B, S, d_value]``; omit for self-attention.
        key: ``[B, S, d_value]``; defaults to ``value``. Must be omitted or ``value`` itself:
            keys and values share one fused projection input.
        attention_mask: boolean, broadcastable to ``[B, T, S]``, ``True`` = attend.
        query_padding_mask: ``[B, T]``; defaults to the query's Keras mask.
        key_padding_mask: ``[B, S]``; defaults to the value's Keras mask.
        use_causal_mask: add a causal mask (query ``i`` sees keys ``<= i``, offset by
            ``cache_index`` when caching).
        cache: ``[B, 2, H_kv, S_max, key_dim]`` KV cache, or ``None``.
        cache_index: scalar write position in the cache. ``cache`` with ``cache_index=None``
            is a memory projected beforehand by :meth:`compute_key_value_cache`
            (cross-attention during decoding): it is read, not written, and ``value`` may
            be omitted.
        return_attention_scores: also return the weights ``[B, H, T, S]``.
        training: enables dropout.

    Quantization points (``QUANTIZATION_POINTS``, see
    :mod:`keras_transformer.layers.quantization_points`): the fused self-attention
    ``"projection"`` (queries, keys and values, before the head split), the cross-attention
    ``"query_projection"`` and ``"memory_projection"`` (keys and values), the scaled
    ``"query"``, the raw ``"scores"``, the bounded ``"masked_scores"``, the softmax
    ``"attention_weights"``, the ``"attention_output"`` (weights times values) and the
    projected ``"output"``. None sits right after a split or stack: an int8 split shares its
    input's scale.

    Returns:
        ``output`` ``[B, T, output_dim]``; then the attention weights if
        ``return_attention_scores``; then the updated cache if ``cache`` was given.

    Example:
    >>> x = keras.random.normal((2, 10, 64))
    >>> mha = MultiHeadAttention(num_heads=8, key_dim=8, num_key_value_heads=2)
    >>> tuple(mha(x, use_causal_mask=True).shape)
    (2, 10, 64)
    """

    QUANTIZATION_POINTS = (
        "projection",
        "query_projection",
        "memory_projection",
        "query",
        "scores",
        "masked_scores",
        "attention_weights",
        "attention_output",
        "output",
    )
    # Set by quantization tools to {point name: callable}; None computes in plain float.
    quantization_points = None
    # True while exported for integer activations: see quantization_points.bounded_scores.
    bounded_masked_scores = False

    def __init__(
        self,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        num_key_value_heads: int | None = None,
        output_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        use_rotary_embedding: bool = False,
        rotary_max_wavelength: int = 10000,
        sliding_window: int | None = None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_key_value_heads = num_heads if num_key_value_heads is None else num_key_value_heads
        if num_heads < 1 or key_dim is None or key_dim < 1:
            raise ArgumentError(
                f"MultiHeadAttention: num_heads and key_dim must be >= 1, got "
                f"num_heads={num_heads}, key_dim={key_dim}"
            )
        if num_key_value_heads < 1 or num_heads % num_key_value_heads:
            raise ArgumentError(
                f"MultiHeadAttention: num_key_value_heads={num_key_value_heads} must divide "
                f"num_heads={num_heads}"
            )
        if use_rotary_embedding and key_dim % 2:
            raise ArgumentError(
                f"MultiHeadAttention: rotary embedding needs an even key_dim, got {key_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ArgumentError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = key_dim if value_dim is None else value_dim
        self.num_key_value_heads = num_key_value_heads
        self.output_dim = output_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.use_rotary_embedding = use_rotary_embedding
        self.rotary_max_wavelength = rotary_max_wavelength
        self.sliding_window = sliding_window
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.supports_masking = True
        self._seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None
        self._rotary = (
            RotaryEmbedding(rotary_max_wavelength, dtype=self.dtype_policy)
            if use_rotary_embedding
            else None
        )

    @property
    def _query_width(self) -> int:
        return self.num_heads * self.key_dim

    @property
    def _key_value_width(self) -> int:
        return self.num_key_value_heads * (self.key_dim + self.value_dim)

    def build(self, query_shape, value_shape=None, key_shape=None):
        check_rank("MultiHeadAttention", "query", query_shape, 3)
        value_shape = query_shape if value_shape is None else value_shape
        check_rank("MultiHeadAttention", "value", value_shape, 3)
        query_features, value_features = query_shape[-1], value_shape[-1]
        output_dim = self.output_dim or query_features
        self.query_kernel = self._add_kernel("query_kernel", (query_features, self._query_width))
        self.key_value_kernel = self._add_kernel(
            "key_value_kernel", (value_features, self._key_value_width)
        )
        self.output_kernel = self._add_kernel(
            "output_kernel", (self.num_heads * self.value_dim, output_dim)
        )
        if self.use_bias:
            self.query_bias = self._add_bias("query_bias", self._query_width)
            self.key_value_bias = self._add_bias("key_value_bias", self._key_value_width)
            self.output_bias = self._add_bias("output_bias", output_dim)
        self._query_features, self._value_features = query_features, value_features

    def _add_kernel(self, name, shape):
        return self.add_weight(
            name=name, shape=shape, initializer=clone_initializer(self.kernel_initializer)
        )

    def _add_bias(self, name, size):
        return self.add_weight(name=name, shape=(size,), initializer=self.bias_initializer)

    # -- projections ------------------------------------------------------------------
    # Head layout and the split of the fused projection: attention_layout.py.
    def _project(self, x, kernel, bias):
        y = ops.matmul(x, kernel)
        return y + bias if bias is not None else y

    def _bias(self, name):
        return getattr(self, name) if self.use_bias else None

    def _project_self(self, x):
        """Queries, keys and values of one sequence with one matmul."""
        kernel = ops.concatenate([self.query_kernel, self.key_value_kernel], axis=1)
        bias = (
            ops.concatenate([self.query_bias, self.key_value_bias], axis=0)
            if self.use_bias
            else None
        )
        projected = quantization_point(self, "projection", self._project(x, kernel, bias))
        return split_heads(
            projected, self.num_heads, self.num_key_value_heads, self.key_dim, self.value_dim
        )

    def _project_memory(self, value):
        """Keys and values of a memory (cross-attention), head-major."""
        projected = self._project(value, self.key_value_kernel, self._bias("key_value_bias"))
        projected = quantization_point(self, "memory_projection", projected)
        return split_heads(projected, 0, self.num_key_value_heads, self.key_dim, self.value_dim)[1:]

    def compute_key_value_cache(self, value, key=None):
        """Project a (cross-attention) memory once: ``[B, 2, H_kv, S, key_dim]``."""
        self._check_key(value, key)
        self._check_cacheable()
        return ops.stack(self._project_memory(value), axis=1)

    # -- call -------------------------------------------------------------------------
    def call(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        query_padding_mask=None,
        key_padding_mask=None,
        use_causal_mask: bool = False,
        cache=None,
        cache_index=None,
        return_attention_scores: bool = False,
        training=None,
    ):
        check_rank("MultiHeadAttention", "query", query.shape, 3)
        # A cache without an index holds a memory projected beforehand (cross-attention).
        precomputed_memory = cache is not None and cache_index is None
        self_attention = (value is None or value is query) and not precomputed_memory
        self._check_key(value, key)
        if query_padding_mask is None:
            query_padding_mask = keras_mask_of(query)
        if key_padding_mask is None and cache is None:
            # With a cache the keys are the S_max cache slots, not the new tokens: their
            # padding is whatever the caller passes in `key_padding_mask`.
            key_padding_mask = keras_mask_of(query if self_attention else value)

        query_length = ops.shape(query)[1]
        offset = 0
        if self_attention:
            q, k, v = self._project_self(query)
            if self._rotary is not None:
                start = 0 if cache is None else cache_index
                q = self._rotary(q, start_index=start, sequence_axis=2)
                k = self._rotary(k, start_index=start, sequence_axis=2)
        else:
            projected = self._project(query, self.query_kernel, self._bias("query_bias"))
            q = to_heads(
                quantization_point(self, "query_projection", projected),
                self.num_heads,
                self.key_dim,
            )
            if not precomputed_memory:
                check_rank("MultiHeadAttention", "value", value.shape, 3)
                k, v = self._project_memory(value)

        if cache is not None:
            self._check_cache(cache)
            if not precomputed_memory:
                offset = cache_index if self_attention else 0
                update = ops.cast(ops.stack([k, v], axis=1), cache.dtype)
                start = [0, 0, 0, ops.cast(cache_index, "int32"), 0]
                cache = ops.slice_update(cache, start, update)
            # Unstacked, not indexed: TFLite runs a 5-D strided slice element by element
            # (about 0.1 ms per slice on this cache, most of a decode step); unpack copies.
            k, v = ops.unstack(cache, 2, axis=1)

        mask = attention_mask_for(
            query_length,
            ops.shape(k)[2],
            query_padding_mask=query_padding_mask,
            key_padding_mask=key_padding_mask,
            attention_mask=checked_attention_mask(attention_mask, query, k),
            use_causal_mask=use_causal_mask,
            sliding_window=self.sliding_window,
            offset=offset,
        )
        if mask is not None and len(mask.shape) == 3:
            mask = ops.expand_dims(mask, 1)  # [B, T, S] -> [B, 1, T, S], shared by the heads
        attended, weights = attend(
            q,
            k,
            v,
            mask=mask,
            dropout_rate=self.dropout,
            training=bool(training) and self.dropout > 0,
            seed=self._seed_generator,
            quantize=point_function(self),
            bounded=self.bounded_masked_scores,
        )
        output = self._output(attended)
        results = (output,)
        if return_attention_scores:
            results += (weights,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def _output(self, attended):
        """Heads ``[B, H, T, Dv]`` merged and projected: ``[B, T, output_dim]``."""
        batch, length = ops.shape(attended)[0], ops.shape(attended)[2]
        attended = ops.reshape(
            ops.transpose(attended, (0, 2, 1, 3)), (batch, length, self.num_heads * self.value_dim)
        )
        projected = self._project(attended, self.output_kernel, self._bias("output_bias"))
        return quantization_point(self, "output", projected)

    # -- one decoding step over read-only caches ----------------------------------------
    def decode_step(self, query, key_cache, value_cache, cache_index=None, key_padding_mask=None):
        """One token's attention over caches that are read, never written (the device export).

        Args:
            query: ``[B, 1, d_query]``.
            key_cache: ``[B, H_kv, S, key_dim]``.
            value_cache: ``[B, H_kv, value_dim, S]``, value-major (see
                :func:`~keras_transformer.layers.scaled_dot_product_attention.attend_step`).
            cache_index: self-attention: the token's position; cache slots before it hold
                the earlier tokens' keys and values, and the token's own are computed here.
                ``None``: cross-attention over a memory (:meth:`compute_key_value_cache`).
            key_padding_mask: ``[B, S]``, the keys to attend (the memory's real tokens).

        Returns:
            Self-attention: ``(output [B, 1, output_dim], new_key [B, H_kv, 1, key_dim],
            new_value [B, H_kv, 1, value_dim])``, the token's own entry for the caller to
            store at ``cache_index``. Cross-attention: ``output``.
        """
        check_rank("MultiHeadAttention", "query", query.shape, 3)
        if query.shape[1] not in (None, 1):
            raise ArgumentError(
                f"MultiHeadAttention.decode_step: one query token at a time, got {query.shape[1]}"
            )
        self._check_cacheable()
        point = point_function(self)
        cache_length = ops.shape(key_cache)[2]
        if cache_index is None:
            projected = self._project(query, self.query_kernel, self._bias("query_bias"))
            query = quantization_point(self, "query_projection", projected)
            mask = None
            if key_padding_mask is not None:
                mask = ops.reshape(ops.cast(key_padding_mask, "bool"), (-1, 1, 1, cache_length))
            attended, _ = attend_memory_step(
                to_heads(query, self.num_heads, self.key_dim),
                key_cache,
                value_cache,
                mask=mask,
                quantize=point,
                bounded=self.bounded_masked_scores,
            )
            return self._output(attended)
        q, k, v = self._project_self(query)
        if self._rotary is not None:
            q = self._rotary(q, start_index=cache_index, sequence_axis=2)
            k = self._rotary(k, start_index=cache_index, sequence_axis=2)
        visible = merge_masks(
            slots_before(cache_length, cache_index),
            attention_mask_for(
                1,
                cache_length,
                key_padding_mask=key_padding_mask,
                sliding_window=self.sliding_window,
                use_causal_mask=True,
                offset=cache_index,
            ),
        )
        attended, _ = attend_step(
            q,
            key_cache,
            value_cache,
            k,
            v,
            ops.expand_dims(visible, -3),  # [B or 1, 1, S] -> [B or 1, 1, 1, S]
            quantize=point,
            bounded=self.bounded_masked_scores,
        )
        return self._output(attended), k, v

    # -- checks -----------------------------------------------------------------------
    def _check_key(self, value, key):
        if key is not None and key is not value:
            raise ArgumentError(
                "MultiHeadAttention: `key` must be omitted or be the `value` tensor itself: keys "
                "and values share one fused projection of the same memory"
            )

    def _check_cacheable(self):
        if self.key_dim != self.value_dim:
            raise ArgumentError(
                f"MultiHeadAttention: a KV cache needs key_dim == value_dim, got "
                f"key_dim={self.key_dim}, value_dim={self.value_dim}"
            )

    def _check_cache(self, cache):
        self._check_cacheable()
        check_cache_shape(cache, self.num_key_value_heads, self.key_dim)

    def compute_mask(self, query, value=None, key=None, **kwargs):
        return keras_mask_of(query)

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "use_rotary_embedding": self.use_rotary_embedding,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "sliding_window": self.sliding_window,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config
