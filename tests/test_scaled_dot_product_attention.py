"""scaled_dot_product_attention against a NumPy implementation written from the formula."""

import keras
import numpy as np
import pytest

from keras_transformer.layers import scaled_dot_product_attention
from keras_transformer.layers.scaled_dot_product_attention import attend, attend_memory_step


def reference_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V, one head at a time, in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    batch, heads, t, d = q.shape
    group = heads // k.shape[1]
    out = np.zeros((batch, heads, t, v.shape[-1]))
    weights = np.zeros((batch, heads, t, k.shape[2]))
    full_mask = None if mask is None else np.broadcast_to(mask, (batch, heads, t, k.shape[2]))
    for b in range(batch):
        for h in range(heads):
            scores = q[b, h] @ k[b, h // group].T / np.sqrt(d)
            if full_mask is not None:
                scores = np.where(full_mask[b, h], scores, -np.inf)
            for i in range(t):
                row = scores[i]
                if np.all(np.isneginf(row)):
                    continue  # fully masked: zeros by contract
                e = np.exp(row - row.max())
                weights[b, h, i] = e / e.sum()
            out[b, h] = weights[b, h] @ v[b, h // group]
    return out, weights


def _qkv(rng, b=2, h=4, t=5, s=7, d=8, kv_heads=None, dv=None):
    kv_heads = kv_heads or h
    q = rng.standard_normal((b, h, t, d)).astype("float32")
    k = rng.standard_normal((b, kv_heads, s, d)).astype("float32")
    v = rng.standard_normal((b, kv_heads, s, dv or d)).astype("float32")
    return q, k, v


def test_matches_formula_without_mask(rng):
    q, k, v = _qkv(rng, dv=6)
    out, weights = scaled_dot_product_attention(q, k, v)
    ref_out, ref_weights = reference_attention(q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, atol=1e-6)


@pytest.mark.parametrize("mask_shape", [(2, 1, 5, 7), (2, 4, 5, 7), (5, 7), (2, 1, 1, 7)])
def test_matches_formula_with_broadcast_masks(rng, mask_shape):
    q, k, v = _qkv(rng)
    mask = rng.random(mask_shape) > 0.3
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-6)


def test_causal_flag_equals_explicit_lower_triangle(rng):
    q, k, v = _qkv(rng, t=6, s=6)
    out, weights = scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_out, _ = reference_attention(q, k, v, np.tril(np.ones((6, 6), bool)))
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    assert np.all(np.triu(np.asarray(weights)[0, 0], 1) == 0)


def test_fully_masked_row_gives_zeros_not_nan(rng):
    q, k, v = _qkv(rng)
    mask = np.ones((2, 1, 5, 7), bool)
    mask[0, 0, 2] = False  # query 2 of example 0 sees nothing
    mask[1] = False  # example 1 sees nothing at all
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    out, weights = np.asarray(out), np.asarray(weights)
    assert np.isfinite(out).all() and np.isfinite(weights).all()
    assert np.all(out[0, :, 2] == 0) and np.all(weights[0, :, 2] == 0)
    assert np.all(out[1] == 0)
    ref_out, _ = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)


def test_grouped_query_attention_equals_repeated_heads(rng):
    q, k, v = _qkv(rng, h=8, kv_heads=2)
    out, weights = scaled_dot_product_attention(q, k, v)
    repeated = [np.repeat(x, 4, axis=1) for x in (k, v)]
    full_out, full_weights = scaled_dot_product_attention(q, *repeated)
    np.testing.assert_allclose(out, full_out, atol=1e-6)
    np.testing.assert_allclose(weights, full_weights, atol=1e-6)
    np.testing.assert_allclose(out, reference_attention(q, k, v)[0], atol=1e-5)


def test_dropout_only_in_training_and_scales_kept_weights(rng):
    q, k, v = _qkv(rng, b=4, t=16, s=16)
    eval_out, _ = scaled_dot_product_attention(q, k, v, dropout_rate=0.5, training=False)
    np.testing.assert_allclose(eval_out, reference_attention(q, k, v)[0], atol=1e-5)
    seed = keras.random.SeedGenerator(7)
    v_eye = np.broadcast_to(np.eye(16, dtype="float32"), (4, 4, 16, 16))
    dropped, weights = scaled_dot_product_attention(
        q, k, v_eye, dropout_rate=0.5, training=True, seed=seed
    )
    dropped, weights = np.asarray(dropped), np.asarray(weights)
    kept = dropped != 0
    assert 0.4 < kept.mean() < 0.6  # about half the weights dropped
    np.testing.assert_allclose(dropped[kept], 2.0 * weights[kept], rtol=1e-5)


def test_custom_scale(rng):
    q, k, v = _qkv(rng)
    out, _ = scaled_dot_product_attention(q, k, v, scale=1.0)
    ref_out, _ = reference_attention(q * np.sqrt(8), k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-4)


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 5, 8), (2, 4, 7, 8), (2, 4, 7, 8)), "`query` must be rank 4"),
        (((2, 4, 5, 8), (2, 4, 7, 6), (2, 4, 7, 8)), "depths differ"),
        (((2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 6, 8)), "lengths differ"),
        (((2, 4, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)), "multiple of `key` heads"),
    ],
)
def test_bad_shapes_raise_value_error_naming_argument(shapes, message):
    q, k, v = (np.zeros(s, "float32") for s in shapes)
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(q, k, v)


def test_bad_mask_shape_names_mask_and_shapes(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(ValueError, match=r"`mask` of shape \(2, 1, 5, 6\)"):
        scaled_dot_product_attention(q, k, v, mask=np.ones((2, 1, 5, 6), bool))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_decoding_step_against_a_memory_is_attend_over_it(kv_heads):
    # With float activations and one query per key head the step is a product and a sum
    # (no dynamic matmul operand for XNNPACK to repack); grouped heads keep the matmul.
    rng = np.random.default_rng(0)
    query = rng.standard_normal((3, 4, 1, 8)).astype("float32")
    keys = rng.standard_normal((3, kv_heads, 7, 8)).astype("float32")
    values = rng.standard_normal((3, kv_heads, 7, 5)).astype("float32")
    mask = np.ones((3, 1, 1, 7), bool)
    mask[1, ..., 4:] = False
    mask[2] = False  # nothing to attend: zeros, not NaN
    expected, expected_weights = attend(query, keys, values, mask)
    output, weights = attend_memory_step(query, keys, np.swapaxes(values, -1, -2), mask)
    np.testing.assert_allclose(np.asarray(output), np.asarray(expected), atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), np.asarray(expected_weights), atol=1e-6)
    assert not np.asarray(output)[2].any()
