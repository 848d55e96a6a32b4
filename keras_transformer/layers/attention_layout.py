"""How :class:`~keras_transformer.layers.MultiHeadAttention` lays out its heads and caches.

Heads are ``[B, heads, L, depth]`` right after each projection, with a single transpose of
the fused output: the attention matmuls then need no further transposes, and a head split
is a contiguous copy (a split along the feature axis is a strided one). A self-attention
KV cache is ``[B, 2, H_kv, S_max, key_dim]`` (keys, then values).

The checks here raise :class:`ArgumentError` naming the layer, the argument and the shape.
"""

from __future__ import annotations

from keras import ops

from keras_transformer.layers.validation import ArgumentError


def to_heads(x, num_heads: int, depth: int):
    """``[B, L, num_heads * depth]`` -> ``[B, num_heads, L, depth]``."""
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    return ops.transpose(ops.reshape(x, (batch, length, num_heads, depth)), (0, 2, 1, 3))


def split_heads(projected, query_heads: int, kv_heads: int, key_dim: int, value_dim: int):
    """Fused ``[B, L, query_heads*Dk + H_kv*Dk + H_kv*Dv]`` -> ``(q, k, v)``, head-major.

    ``query_heads=0`` (a memory): ``q`` is ``None`` and the split has two parts, not an
    empty third: a full-int8 TFLite converter could give the empty part's split other
    quantization parameters than its input, and fail ("violate the same scale constraint")
    in some processes.
    """
    if key_dim == value_dim:
        heads = to_heads(projected, query_heads + 2 * kv_heads, key_dim)
        # Equal parts split with SPLIT, which TFLite's XNNPACK delegate runs; uneven ones
        # need SPLIT_V, which it does not, and each op it leaves out splits the graph
        # around it (measured: a decode step 0.02 ms slower).
        if not query_heads:
            key, value = ops.split(heads, 2, axis=1)
            return None, key, value
        if query_heads == kv_heads:
            query, key, value = ops.split(heads, 3, axis=1)
            return query, key, value
        query, key, value = ops.split(heads, [query_heads, query_heads + kv_heads], axis=1)
        return query, key, value
    query_width, key_width = query_heads * key_dim, kv_heads * key_dim
    if not query_heads:
        key, value = ops.split(projected, [key_width], axis=-1)
        return None, to_heads(key, kv_heads, key_dim), to_heads(value, kv_heads, value_dim)
    query, key, value = ops.split(projected, [query_width, query_width + key_width], axis=-1)
    return (
        to_heads(query, query_heads, key_dim),
        to_heads(key, kv_heads, key_dim),
        to_heads(value, kv_heads, value_dim),
    )


def check_cache_shape(cache, kv_heads: int, key_dim: int) -> None:
    """A self-attention cache must be ``[B, 2, kv_heads, S_max, key_dim]``."""
    expected = (2, kv_heads, None, key_dim)
    shape = tuple(cache.shape)
    if len(shape) != 5 or any(
        want is not None and got is not None and got != want
        for got, want in zip(shape[1:], expected)
    ):
        raise ArgumentError(
            f"MultiHeadAttention: `cache` must have shape [batch, 2, {kv_heads}, max_length, "
            f"{key_dim}], got {shape}"
        )


def checked_attention_mask(attention_mask, query, key):
    """``attention_mask`` if it broadcasts to ``[B, T, S]`` (query ``[B, T, d]``, key
    ``[B, H_kv, S, D]``), else an error; ``None`` stays ``None``."""
    if attention_mask is None:
        return None
    target = (query.shape[0], query.shape[1], key.shape[2])
    shape = tuple(attention_mask.shape)
    if len(shape) > 4 or any(
        got is not None and want is not None and got not in (1, want)
        for got, want in zip(reversed(shape[-3:]), reversed(target))
    ):
        raise ArgumentError(
            f"MultiHeadAttention: `attention_mask` of shape {shape} does not broadcast to "
            f"[batch, query_length, key_length] = {target}"
        )
    return attention_mask
