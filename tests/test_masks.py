"""The mask contract: boolean, True = attend; causal, sliding window, padding, merge."""

import numpy as np
import pytest

from keras_transformer.layers import (
    attention_mask_for,
    causal_mask,
    merge_masks,
    padding_mask,
    sliding_window_mask,
)


def test_padding_mask_from_token_ids():
    ids = np.array([[5, 6, 0, 0], [7, 0, 0, 0]])
    np.testing.assert_array_equal(padding_mask(ids), ids != 0)
    np.testing.assert_array_equal(padding_mask(ids, padding_id=7), ids != 7)


def test_causal_mask_is_lower_triangular_and_offsets_for_cache():
    np.testing.assert_array_equal(causal_mask(4), np.tril(np.ones((4, 4), bool)))
    # Two queries at absolute positions 3 and 4 over a cache of 6 slots.
    expected = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(causal_mask(2, 6, offset=3), expected)


def test_sliding_window_causal_and_symmetric():
    causal = np.asarray(sliding_window_mask(5, window=2))
    for i in range(5):
        for j in range(5):
            assert causal[i, j] == (0 <= i - j < 2)
    symmetric = np.asarray(sliding_window_mask(5, window=2, causal=False))
    for i in range(5):
        for j in range(5):
            assert symmetric[i, j] == (abs(i - j) < 2)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(3, window=0)


def test_merge_masks_is_logical_and_with_broadcasting():
    a = np.array([[True, False, True]])
    b = np.array([[True], [False]])
    np.testing.assert_array_equal(merge_masks(a, None, b), a & b)
    assert merge_masks(None, None) is None


def test_attention_mask_for_combines_every_source():
    query_pad = np.array([[1, 1, 0]], bool)
    key_pad = np.array([[1, 1, 1, 0]], bool)
    extra = np.ones((1, 3, 4), bool)
    extra[0, 0, 1] = False
    got = np.asarray(
        attention_mask_for(
            3,
            4,
            query_padding_mask=query_pad,
            key_padding_mask=key_pad,
            attention_mask=extra,
            use_causal_mask=True,
            offset=1,
        )
    )
    expected = (
        query_pad[:, :, None]
        & key_pad[:, None, :]
        & extra
        & (np.arange(4)[None, :] <= np.arange(3)[:, None] + 1)
    )
    np.testing.assert_array_equal(got, expected)
    assert attention_mask_for(3, 4) is None
