"""Attention masks: one contract for every layer in keras_transformer.

The contract
------------
* A mask is **boolean** and ``True`` means *may attend* (or *is a real token*).
* A **padding mask** has shape ``[B, L]``: ``True`` for real tokens. It comes from token
  ids (:func:`padding_mask`) or from a Keras mask (``Embedding(mask_zero=True)`` sets one,
  and every layer here picks it up).
* An **attention mask** is broadcastable to ``[B, T, S]`` at layer level (T queries, S keys)
  and to ``[B, H, T, S]`` inside :func:`scaled_dot_product_attention`. Layers expand a
  ``[B, T, S]`` mask to ``[B, 1, T, S]`` before the heads.
* Masks combine by logical AND (:func:`merge_masks`): a key padding mask becomes
  ``[B, 1, S]``, a query padding mask ``[B, T, 1]``, a causal or sliding-window mask
  ``[T, S]``.
* With a KV cache the queries sit at absolute positions ``offset .. offset + T - 1`` and the
  keys at ``0 .. S_max - 1``; causal and sliding-window masks take that ``offset``, so cache
  slots not yet written are masked by causality alone. An ``offset`` of shape ``[B]`` (one
  per row, ``layers/positions.py``) makes those masks ``[B, T, S]``.
* A query row with no key left to attend to yields zeros, never NaN.
"""

from __future__ import annotations

from keras import ops

from keras_transformer.layers.positions import is_per_row
from keras_transformer.layers.validation import ArgumentError


def padding_mask(token_ids, padding_id: int = 0):
    """``[B, L]`` boolean mask, ``True`` where ``token_ids != padding_id``."""
    return ops.not_equal(token_ids, padding_id)


def _key_minus_query(query_length: int, key_length: int):
    """``[T, S]`` key index minus query index (int32), before any offset.

    Masks compare this constant with the offset instead of adding the offset to positions:
    then no int32 arithmetic depends on the (tensor) offset, which TFLite's 16x8 quantizer
    cannot take.
    """
    query_positions = ops.expand_dims(ops.arange(query_length, dtype="int32"), 1)
    key_positions = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return key_positions - query_positions


def _offset(offset):
    """``offset`` as int32, a per-row ``[B]`` one as ``[B, 1, 1]`` (against ``[T, S]``)."""
    if is_per_row(offset):
        return ops.reshape(ops.cast(offset, "int32"), (-1, 1, 1))
    return ops.cast(offset, "int32")


def causal_mask(query_length: int, key_length: int | None = None, offset=0):
    """``[T, S]``: query ``i`` (at absolute position ``offset + i`` sees keys ``<= offset + i``.

    ``offset`` may be a Python int, a scalar tensor (the KV-cache write index) or ``[B]``
    (then ``[B, T, S]``).
    """
    key_length = query_length if key_length is None else key_length
    # key <= offset + query
    return ops.less_equal(_key_minus_query(query_length, key_length), _offset(offset))


def slots_before(key_length: int, offset):
    """``[1, S]`` (``[B, 1, S]`` for a per-row offset): the cache slots before position
    ``offset`` (those already written when a decoding step's token sits at ``offset`` and its
    own key is kept apart)."""
    return ops.less(_key_minus_query(1, key_length), _offset(offset))


def sliding_window_mask(
    query_length: int,
    key_length: int | None = None,
    window: int = 1,
    offset=0,
    causal: bool = True,
):
    """``[T, S]`` local-attention mask.

    With ``causal=True`` query position ``p`` sees keys in ``(p - window, p]`` (the Mistral
    convention: ``window`` keys including itself). With ``causal=False`` it sees keys with
    ``|p - k| < window``.
    """
    if window < 1:
        raise ArgumentError(f"sliding window must be >= 1, got window={window}")
    key_length = query_length if key_length is None else key_length
    # distance = offset + query - key = offset - relative; 0 <= distance < window, or
    # |distance| < window, written as comparisons of constants with the offset.
    relative = _key_minus_query(query_length, key_length)
    offset = _offset(offset)
    if causal:
        return ops.logical_and(relative <= offset, relative + window > offset)
    return ops.logical_and(relative - window < offset, relative + window > offset)


def merge_masks(*masks):
    """Logical AND of broadcastable boolean masks; ``None`` entries are skipped.

    Returns ``None`` when every entry is ``None``.
    """
    merged = None
    for mask in masks:
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def attention_mask_for(
    query_length: int,
    key_length: int,
    *,
    query_padding_mask=None,
    key_padding_mask=None,
    attention_mask=None,
    use_causal_mask: bool = False,
    sliding_window: int | None = None,
    offset=0,
):
    """Combine every mask source into one mask broadcastable to ``[B, T, S]`` (or ``None``).

    ``query_padding_mask`` ``[B, T]`` and ``key_padding_mask`` ``[B, S]`` are padding masks;
    ``attention_mask`` is any mask broadcastable to ``[B, T, S]``; ``use_causal_mask`` and
    ``sliding_window`` add position masks for queries starting at ``offset``.
    """
    position_mask = None
    if sliding_window is not None:
        position_mask = sliding_window_mask(
            query_length, key_length, sliding_window, offset, causal=use_causal_mask
        )
    elif use_causal_mask:
        position_mask = causal_mask(query_length, key_length, offset)
    if query_padding_mask is not None:
        query_padding_mask = ops.expand_dims(ops.cast(query_padding_mask, "bool"), -1)
    if key_padding_mask is not None:
        key_padding_mask = ops.expand_dims(ops.cast(key_padding_mask, "bool"), -2)
    return merge_masks(attention_mask, key_padding_mask, query_padding_mask, position_mask)
