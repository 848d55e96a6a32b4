"""softmax(Q K^T / sqrt(d_k)) V, written with ``keras.ops`` so it runs on every backend."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.masks import causal_mask
from keras_transformer.layers.quantization_points import QUANTIZED_MASK_VALUE
from keras_transformer.layers.validation import ArgumentError

# Added to masked scores before the softmax. Finite (not -inf) so a row with every key
# masked stays NaN-free, and bounded so a quantized score tensor keeps a small range.
MASK_VALUE = -1e9

_HALF_DTYPES = ("float16", "bfloat16")


def _shape_error(function: str, argument: str, expected: str, shape) -> ArgumentError:
    return ArgumentError(f"{function}: `{argument}` must be {expected}, got shape {tuple(shape)}")


def _check_inputs(query, key, value, mask) -> None:
    name = "scaled_dot_product_attention"
    for argument, tensor in (("query", query), ("key", key), ("value", value)):
        if len(tensor.shape) != 4:
            raise _shape_error(name, argument, "rank 4 [batch, heads, length, depth]", tensor.shape)
    q_heads, q_depth = query.shape[1], query.shape[3]
    k_heads, k_length, k_depth = key.shape[1], key.shape[2], key.shape[3]
    v_heads, v_length = value.shape[1], value.shape[2]
    if None not in (q_depth, k_depth) and q_depth != k_depth:
        raise ArgumentError(
            f"{name}: `query` and `key` depths differ: query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}"
        )
    if None not in (k_length, v_length) and k_length != v_length:
        raise ArgumentError(
            f"{name}: `key` and `value` lengths differ: key {tuple(key.shape)}, "
            f"value {tuple(value.shape)}"
        )
    if None not in (k_heads, v_heads) and k_heads != v_heads:
        raise ArgumentError(
            f"{name}: `key` and `value` head counts differ: key {tuple(key.shape)}, "
            f"value {tuple(value.shape)}"
        )
    if None not in (q_heads, k_heads) and q_heads % k_heads:
        raise ArgumentError(
            f"{name}: `query` heads must be a multiple of `key` heads (grouped-query "
            f"attention): query {tuple(query.shape)}, key {tuple(key.shape)}"
        )
    if mask is not None:
        if len(mask.shape) > 4:
            raise _shape_error(name, "mask", "broadcastable to [batch, heads, T, S]", mask.shape)
        target = (query.shape[0], q_heads, query.shape[2], k_length)
        for got, want in zip(reversed(mask.shape), reversed(target)):
            if got is not None and want is not None and got not in (1, want):
                raise ArgumentError(
                    f"{name}: `mask` of shape {tuple(mask.shape)} does not broadcast to "
                    f"[batch, heads, T, S] = {target}"
                )


def scaled_dot_product_attention(
    query,
    key,
    value,
    mask=None,
    is_causal: bool = False,
    dropout_rate: float = 0.0,
    scale: float | None = None,
    training: bool = False,
    seed=None,
):
    """Scaled dot-product attention with masking, grouped-query heads and dropout.

    Args:
        query: ``[B, H, T, D]``.
        key: ``[B, H_kv, S, D]``; ``H_kv`` divides ``H`` (``H_kv < H`` is grouped-query
            attention: each key/value head serves ``H / H_kv`` query heads).
        value: ``[B, H_kv, S, D_v]``.
        mask: optional boolean mask broadcastable to ``[B, H, T, S]``, ``True`` = attend.
        is_causal: also apply a causal mask (query ``i`` sees keys ``<= i``).
        dropout_rate: dropout on the attention weights, applied only when ``training``.
        scale: multiplier of the scores; defaults to ``1 / sqrt(D)``.
        training: whether dropout is active.
        seed: a ``keras.random.SeedGenerator`` (or int) for dropout.

    Returns:
        ``(output, weights)``: output ``[B, H, T, D_v]`` and the attention weights
        ``[B, H, T, S]`` before dropout. A query row whose keys are all masked gives zero
        weights and a zero output, not NaN.

    Example:
    >>> q = keras.random.normal((2, 4, 5, 8))
    >>> out, weights = scaled_dot_product_attention(q, q, q, is_causal=True)
    >>> tuple(out.shape), tuple(weights.shape)
    ((2, 4, 5, 8), (2, 4, 5, 5))
    """
    _check_inputs(query, key, value, mask)
    if is_causal:
        causal = causal_mask(ops.shape(query)[2], ops.shape(key)[2])
        mask = causal if mask is None else ops.logical_and(ops.cast(mask, "bool"), causal)
    return attend(query, key, value, mask, dropout_rate, scale, training, seed)


def attend(
    query,
    key,
    value,
    mask=None,
    dropout_rate=0.0,
    scale=None,
    training=False,
    seed=None,
    quantize=None,
    bounded=False,
):
    """:func:`scaled_dot_product_attention` without argument checks: the layers' hot path.

    Shapes as there: ``[B, H, T, D]`` queries, ``[B, H_kv, S, D]`` keys and values.

    ``quantize``: optional ``f(point, tensor) -> tensor`` applied at the fake-quantization
    points ``"query"`` (scaled), ``"scores"``, ``"masked_scores"``, ``"attention_weights"``
    and ``"attention_output"``. ``None`` (the default) leaves the math as it is.

    ``bounded``: masked scores are bounded to
    ``[QUANTIZED_MASK_VALUE, 0]`` (:mod:`~keras_transformer.layers.quantization_points`)
    instead of pushed to -1e9, for an integer scores tensor; the weights differ from the
    unbounded ones by at most e^-8 of each masked key's share.
    """
    point = quantize or _no_point
    batch, query_length = ops.shape(query)[0], ops.shape(query)[2]
    key_length = ops.shape(key)[2]
    heads, kv_heads = query.shape[1], key.shape[1]
    value_depth = value.shape[-1]
    grouped = _grouped_query(query, kv_heads, scale, point)
    scores = ops.matmul(grouped, ops.swapaxes(key, -1, -2))
    scores = point("scores", ops.reshape(scores, (batch, heads, query_length, key_length)))
    weights = _masked_softmax(scores, mask, bounded, point)

    attended = weights
    if training and dropout_rate > 0.0:
        attended = keras.random.dropout(weights, dropout_rate, seed=seed)
    attended = ops.reshape(attended, (batch, kv_heads, -1, key_length))
    output = ops.reshape(ops.matmul(attended, value), (batch, heads, query_length, value_depth))
    return point("attention_output", output), weights


def attend_step(
    query,
    key_cache,
    value_cache,
    new_key,
    new_value,
    cache_mask,
    scale=None,
    quantize=None,
    bounded=False,
):
    """One query token against a read-only KV cache plus its own key and value.

    The same result as :func:`attend` over the keys ``key_cache[cache_mask]`` followed by
    ``new_key``, without writing the new entry into the cache: the caller stores it (a
    device runtime writes one row in place instead of copying the whole cache through the
    graph every step).

    Args:
        query: ``[B, H, 1, D]``.
        key_cache: ``[B, H_kv, S, D]``.
        value_cache: ``[B, H_kv, D_v, S]``, value-major: ``weights @ values`` is then a
            matmul with a transposed right side, which TFLite's BATCH_MATMUL reads in place
            (an untransposed right side it copies into a transposed scratch on every call).
        new_key, new_value: ``[B, H_kv, 1, D]`` and ``[B, H_kv, 1, D_v]``, the query token's.
        cache_mask: boolean, broadcastable to ``[B, 1, 1, S]``: the cache slots to attend.
        scale, quantize, bounded: as in :func:`attend`.

    Returns ``(output [B, H, 1, D_v], weights [B, H, 1, S + 1])``, the last weight the new
    token's own.
    """
    point = quantize or _no_point
    batch, cache_length = ops.shape(query)[0], ops.shape(key_cache)[2]
    heads, kv_heads, value_depth = query.shape[1], key_cache.shape[1], new_value.shape[-1]
    grouped = _grouped_query(query, kv_heads, scale, point)  # [B, H_kv, G, D]
    elementwise = _elementwise(grouped, quantize, bounded)
    # Both halves through the scores' quantizer: in an int8 graph they then share its
    # range, and the concatenation is exact instead of a requantization of each.
    cache_scores = _scores(grouped, key_cache, elementwise, point)
    own_scores = _scores(grouped, new_key, elementwise, point)
    scores = ops.concatenate([cache_scores, own_scores], axis=-1)
    scores = point("scores", ops.reshape(scores, (batch, heads, 1, cache_length + 1)))
    visible = ops.broadcast_to(ops.cast(cache_mask, "bool"), (batch, 1, 1, cache_length))
    mask = ops.concatenate([visible, ops.ones((batch, 1, 1, 1), "bool")], axis=-1)
    weights = _masked_softmax(scores, mask, bounded, point)
    grouped_weights = ops.reshape(weights, (batch, kv_heads, -1, cache_length + 1))
    # Slices, not an uneven split: XNNPACK runs STRIDED_SLICE, not SPLIT_V.
    cache_weights = grouped_weights[..., :cache_length]
    own_weight = grouped_weights[..., cache_length:]
    # Each part through the output's quantizer too: an int8 graph then adds two tensors on
    # the output's range, not two the converter calibrated on its own.
    cache_part = _weighted_values(cache_weights, value_cache, elementwise)
    output = point("attention_output", cache_part)
    output = output + point("attention_output", own_weight * new_value)
    output = ops.reshape(output, (batch, heads, 1, value_depth))
    return point("attention_output", output), weights


def attend_memory_step(
    query, key_cache, value_cache, mask=None, scale=None, quantize=None, bounded=False
):
    """One query token against a read-only memory (cross-attention while decoding).

    Args:
        query: ``[B, H, 1, D]``.
        key_cache: ``[B, H_kv, S, D]``.
        value_cache: ``[B, H_kv, D_v, S]``, value-major (as :func:`attend_step`'s).
        mask: boolean, broadcastable to ``[B, H, 1, S]``: the keys to attend.
        scale, quantize, bounded: as in :func:`attend`.

    Returns ``(output [B, H, 1, D_v], weights [B, H, 1, S])``, :func:`attend`'s.
    """
    point = quantize or _no_point
    grouped = _grouped_query(query, key_cache.shape[1], scale, point)
    if not _elementwise(grouped, quantize, bounded):  # the integer graph as it always was
        value = ops.swapaxes(value_cache, -1, -2)
        return attend(query, key_cache, value, mask, quantize=quantize, bounded=bounded)
    batch, memory_length = ops.shape(query)[0], ops.shape(key_cache)[2]
    heads, value_depth = query.shape[1], value_cache.shape[2]
    scores = _scores(grouped, key_cache, True, point)
    weights = _masked_softmax(
        ops.reshape(scores, (batch, heads, 1, memory_length)), mask, False, point
    )
    output = _weighted_values(weights, value_cache, True)
    return ops.reshape(output, (batch, heads, 1, value_depth)), weights


def _elementwise(grouped, quantize, bounded: bool) -> bool:
    """Whether a decoding step's products with a cache are written as a product and a sum.

    TFLite's BATCH_MATMUL treats a cache as a dynamic right-hand side, which XNNPACK repacks
    on every call: 26% of an 8-row ``decode_batch_16`` step (perf). With float activations
    and one query per key head, a product and a sum instead (XNNPACK's vmul and rsum). With
    integer activations (bounded scores, or quantization points) a matmul: its products
    accumulate in int32, where an int8 product tensor would round each one before the sum.
    """
    return quantize is None and not bounded and grouped.shape[2] == 1


def _scores(grouped, keys, elementwise: bool, point):
    """``[B, H_kv, G, S]``: the grouped query ``[B, H_kv, G, D]`` against ``keys``
    ``[B, H_kv, S, D]``."""
    if elementwise:  # G = 1: [B, H, 1, D] * [B, H, S, D] summed over D
        return ops.expand_dims(ops.sum(grouped * keys, axis=-1), 2)
    return point("scores", ops.matmul(grouped, ops.swapaxes(keys, -1, -2)))


def _weighted_values(weights, value_major, elementwise: bool):
    """``[B, H_kv, G, D_v]``: ``weights`` ``[B, H_kv, G, S]`` of value-major values
    ``[B, H_kv, D_v, S]``."""
    if elementwise:  # G = 1: [B, H, 1, S] * [B, H, D_v, S] summed over S
        return ops.expand_dims(ops.sum(weights * value_major, axis=-1), 2)
    return ops.matmul(weights, ops.swapaxes(value_major, -1, -2))


def _no_point(name, x):
    return x


def _grouped_query(query, kv_heads: int, scale, point):
    """The scaled query ``[B, H, T, D]`` as ``[B, H_kv, G * T, D]``.

    Grouped heads fold into the matmul rows (a free reshape), so each key/value head is read
    once for its G query heads (no repeat), and both products are plain batched matmuls
    (5-D einsums were 3x slower to differentiate).
    """
    depth = query.shape[-1]
    if scale is None:
        scale = 1.0 / float(depth) ** 0.5
    query = point("query", query * ops.cast(scale, query.dtype))
    return ops.reshape(query, (ops.shape(query)[0], kv_heads, -1, depth))


def _masked_softmax(scores, mask, bounded: bool, point):
    """Softmax weights of ``scores`` over the keys ``mask`` allows (float32 softmax under
    mixed precision; a fully masked row gives zeros), in the scores' dtype."""
    compute_dtype = keras.backend.standardize_dtype(scores.dtype)
    if compute_dtype in _HALF_DTYPES:
        scores = ops.cast(scores, "float32")
    if mask is not None:
        mask = ops.cast(mask, "bool")
        if bounded:
            scores = point("masked_scores", _bounded_masked_scores(scores, mask))
        else:
            # An additive bias built on the small mask, not a select on the large scores:
            # its backward pass is the identity.
            scores = scores + ops.where(mask, 0.0, MASK_VALUE)
    weights = point("attention_weights", ops.softmax(scores, axis=-1))
    if mask is not None:
        # A fully masked row has a uniform softmax; multiplying by the mask zeroes it.
        weights = weights * ops.cast(mask, weights.dtype)
    return ops.cast(weights, compute_dtype)


def _bounded_masked_scores(scores, mask):
    """Scores with the row maximum (over unmasked keys) at 0, clipped to
    ``[QUANTIZED_MASK_VALUE, 0]``, masked keys at the bound: a small, fixed range for int8."""
    floor = ops.min(scores, axis=-1, keepdims=True)
    scores = ops.where(mask, scores, floor)  # masked keys no longer set the row maximum
    scores = ops.maximum(scores - ops.max(scores, axis=-1, keepdims=True), QUANTIZED_MASK_VALUE)
    return ops.where(mask, scores, QUANTIZED_MASK_VALUE)
