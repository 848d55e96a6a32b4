"""MultiHeadAttention: parity with keras.layers.MultiHeadAttention, KV cache, GQA, rotary."""

import keras
import numpy as np
import pytest
from peers import copy_keras_mha

from keras_transformer.layers import MultiHeadAttention

B, T, S, D, H = 2, 6, 9, 32, 4


def _pair(rng, query_dim=D, value_dim=D):
    query = rng.standard_normal((B, T, query_dim)).astype("float32")
    value = rng.standard_normal((B, S, value_dim)).astype("float32")
    theirs = keras.layers.MultiHeadAttention(num_heads=H, key_dim=8)
    theirs(query, value)
    ours = MultiHeadAttention(num_heads=H, key_dim=8)
    ours(query, value)
    copy_keras_mha(ours, theirs)
    return ours, theirs, query, value


def test_cross_attention_matches_keras_with_padding_mask(rng):
    ours, theirs, query, value = _pair(rng, query_dim=24, value_dim=40)
    key_padding = np.ones((B, S), bool)
    key_padding[0, 6:] = False
    theirs_out, theirs_scores = theirs(
        query,
        value,
        attention_mask=np.broadcast_to(key_padding[:, None, :], (B, T, S)),
        return_attention_scores=True,
    )
    ours_out, ours_scores = ours(
        query, value, key_padding_mask=key_padding, return_attention_scores=True
    )
    np.testing.assert_allclose(ours_out, theirs_out, atol=1e-5)
    np.testing.assert_allclose(ours_scores, theirs_scores, atol=1e-6)


def test_self_attention_matches_keras_with_causal_and_padding(rng):
    query = rng.standard_normal((B, T, D)).astype("float32")
    theirs = keras.layers.MultiHeadAttention(num_heads=H, key_dim=8)
    ours = MultiHeadAttention(num_heads=H, key_dim=8)
    theirs(query, query)
    ours(query)
    copy_keras_mha(ours, theirs)
    mask = np.ones((B, T, T), bool)
    mask[1, :, 4:] = False
    expected = theirs(query, query, attention_mask=mask, use_causal_mask=True)
    got = ours(query, attention_mask=mask, use_causal_mask=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_picks_up_keras_masks_from_embeddings(rng):
    ids = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 1]])
    x = keras.layers.Embedding(10, D, mask_zero=True)(ids)
    layer = MultiHeadAttention(num_heads=H, key_dim=8)
    implicit = np.asarray(layer(x))
    explicit = np.asarray(
        layer(np.asarray(x), key_padding_mask=ids != 0, query_padding_mask=ids != 0)
    )
    np.testing.assert_allclose(implicit, explicit, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rotary", [False, True])
def test_cached_self_attention_equals_full_pass(rng, kv_heads, rotary):
    layer = MultiHeadAttention(
        num_heads=4, key_dim=8, num_key_value_heads=kv_heads, use_rotary_embedding=rotary
    )
    x = rng.standard_normal((B, T, D)).astype("float32")
    full = np.asarray(layer(x, use_causal_mask=True))
    max_length = T + 3  # a cache longer than the sequence: unused slots stay masked
    cache = np.zeros((B, 2, kv_heads, max_length, 8), "float32")
    # Prefill the first 2 tokens, then one token per step: the same call path.
    out, cache = layer(x[:, :2], use_causal_mask=True, cache=cache, cache_index=0)
    steps = [np.asarray(out)]
    for index in range(2, T):
        out, cache = layer(
            x[:, index : index + 1], use_causal_mask=True, cache=cache, cache_index=index
        )
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    assert cache.shape == (B, 2, kv_heads, max_length, 8)
    assert np.all(np.asarray(cache)[:, :, :, T:] == 0)


@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("bounded", [False, True])
def test_read_only_cache_steps_equal_the_full_pass(rng, kv_heads, rotary, window, bounded):
    # decode_step reads the cache and returns the token's own key and value; written back at
    # each index (values value-major), the steps give the full causal pass.
    layer = MultiHeadAttention(
        num_heads=4,
        key_dim=8,
        num_key_value_heads=kv_heads,
        use_rotary_embedding=rotary,
        sliding_window=window,
    )
    layer.bounded_masked_scores = bounded  # the int8 export's masking: same result here
    x = rng.standard_normal((B, T, D)).astype("float32")
    full = np.asarray(layer(x, use_causal_mask=True))
    max_length = T + 3
    # Garbage in the unwritten slots: a step must read only the slots before its index.
    keys = rng.standard_normal((B, kv_heads, max_length, 8)).astype("float32")
    values = rng.standard_normal((B, kv_heads, 8, max_length)).astype("float32")
    steps = []
    for index in range(T):
        out, key, value = layer.decode_step(x[:, index : index + 1], keys, values, index)
        assert key.shape == value.shape == (B, kv_heads, 1, 8)
        keys[:, :, index] = np.asarray(key)[:, :, 0]
        values[:, :, :, index] = np.asarray(value)[:, :, 0]
        steps.append(np.asarray(out))
    # Bounded masking leaves each masked key e^-8 of the softmax denominator: up to about
    # 10 * 3.4e-4 of each output here (a different number of masked keys than the full pass).
    tolerance = {"rtol": 4e-3, "atol": 5e-3} if bounded else {"atol": 1e-5}
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **tolerance)
    # Cross-attention over a projected memory, value-major, with padding.
    memory = rng.standard_normal((B, S, D)).astype("float32")
    padding = np.ones((B, S), bool)
    padding[1, 4:] = False
    cross = MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=kv_heads)
    expected = np.asarray(cross(x, memory, key_padding_mask=padding))
    cache = np.asarray(cross.compute_key_value_cache(memory))
    memory_keys, memory_values = cache[:, 0], np.swapaxes(cache[:, 1], -1, -2)
    for index in range(T):
        step = cross.decode_step(
            x[:, index : index + 1], memory_keys, memory_values, key_padding_mask=padding
        )
        np.testing.assert_allclose(np.asarray(step), expected[:, index : index + 1], atol=1e-5)
    with pytest.raises(ValueError, match="one query token at a time"):
        cross.decode_step(x[:, :2], memory_keys, memory_values)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("window", [None, 3])
def test_per_row_cache_index_steps_each_row_at_its_own_position(rng, rotary, window):
    # Continuous batching: one step where each row writes a different position ([B] index)
    # gives each row's output, key and value of a step at that row's position alone.
    layer = MultiHeadAttention(
        num_heads=4, key_dim=8, use_rotary_embedding=rotary, sliding_window=window
    )
    rows, length = 3, T + 3
    x = rng.standard_normal((rows, 1, D)).astype("float32")
    layer(x)
    keys = rng.standard_normal((rows, 4, length, 8)).astype("float32")
    values = rng.standard_normal((rows, 4, 8, length)).astype("float32")
    index = np.array([0, 5, 2], "int32")
    out, key, value = layer.decode_step(x, keys, values, index)
    for row, at in enumerate(index):
        alone = layer.decode_step(
            x[row : row + 1], keys[row : row + 1], values[row : row + 1], int(at)
        )
        for got, expected in zip((out, key, value), alone, strict=True):
            np.testing.assert_allclose(
                np.asarray(got)[row : row + 1], np.asarray(expected), atol=1e-5
            )


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cross_attention_cache_equals_full_pass(rng, kv_heads):
    layer = MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=kv_heads)
    query = rng.standard_normal((B, T, D)).astype("float32")
    memory = rng.standard_normal((B, S, D)).astype("float32")
    key_padding = np.ones((B, S), bool)
    key_padding[1, 5:] = False
    full = np.asarray(layer(query, memory, key_padding_mask=key_padding))
    cache = layer.compute_key_value_cache(memory)
    assert cache.shape == (B, 2, kv_heads, S, 8)
    for index in range(T):
        step = layer(query[:, index : index + 1], cache=cache, key_padding_mask=key_padding)
        step_out = np.asarray(step[0])
        np.testing.assert_allclose(step_out, full[:, index : index + 1], atol=1e-5)


def test_cache_in_a_compiled_function_keeps_static_shapes(rng):
    """One traced graph serves every step: the cache shape never changes."""
    import tensorflow as tf

    layer = MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
    x = rng.standard_normal((1, T, D)).astype("float32")
    full = np.asarray(layer(x, use_causal_mask=True))

    @tf.function(jit_compile=True, reduce_retracing=True)
    def step(token_states, cache, index):
        return layer(token_states, use_causal_mask=True, cache=cache, cache_index=index)

    cache = tf.zeros((1, 2, 2, 8, 8))
    outputs = []
    for index in range(T):
        out, cache = step(x[:, index : index + 1], cache, tf.constant(index))
        outputs.append(out.numpy())
    np.testing.assert_allclose(np.concatenate(outputs, 1), full, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


def test_rotary_scores_depend_only_on_relative_position(rng):
    from keras_transformer.layers import RotaryEmbedding

    rotary = RotaryEmbedding()
    q = np.broadcast_to(rng.standard_normal((1, 1, 1, 16)), (1, 12, 1, 16)).astype("float32")
    k = np.broadcast_to(rng.standard_normal((1, 1, 1, 16)), (1, 12, 1, 16)).astype("float32")
    rq, rk = np.asarray(rotary(q))[0, :, 0], np.asarray(rotary(k))[0, :, 0]
    scores = rq @ rk.T
    # Same offset, same score: (m, n) and (m + 5, n + 5).
    np.testing.assert_allclose(scores[2, 0], scores[7, 5], rtol=1e-4)
    np.testing.assert_allclose(scores[6, 3], scores[10, 7], rtol=1e-4)
    # Rotation keeps norms; start_index shifts positions.
    np.testing.assert_allclose(
        np.linalg.norm(rq, axis=-1), np.linalg.norm(q[0, :, 0], axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(rotary(q[:, 3:5], start_index=3))[0, :, 0], rq[3:5], atol=1e-5
    )


def test_sliding_window_limits_what_changes_an_output(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=8, sliding_window=3)
    x = rng.standard_normal((1, 10, 16)).astype("float32")
    base = np.asarray(layer(x, use_causal_mask=True))
    changed = x.copy()
    changed[0, 2] += 5.0
    out = np.asarray(layer(changed, use_causal_mask=True))
    moved = np.abs(out - base).max(-1)[0] > 1e-6
    np.testing.assert_array_equal(moved, [i in (2, 3, 4) for i in range(10)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_heads=6, key_dim=8, num_key_value_heads=4), "num_key_value_heads=4 must divide"),
        (dict(num_heads=0, key_dim=8), "num_heads and key_dim"),
        (dict(num_heads=2, key_dim=7, use_rotary_embedding=True), "even key_dim"),
        (dict(num_heads=2, key_dim=8, dropout=1.5), "dropout"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_call_arguments_name_the_argument_and_shape(rng):
    layer = MultiHeadAttention(num_heads=4, key_dim=8)
    x = rng.standard_normal((B, T, D)).astype("float32")
    with pytest.raises(ValueError, match=r"`query` must have rank 3, got shape \(2, 32\)"):
        layer(x[:, 0])
    with pytest.raises(ValueError, match=r"`attention_mask` of shape \(2, 6, 5\)"):
        layer(x, attention_mask=np.ones((B, T, 5), bool))
    with pytest.raises(ValueError, match=r"`cache` must have shape \[batch, 2, 4, max_length, 8\]"):
        layer(x, cache=np.zeros((B, 2, 2, 10, 8), "float32"), cache_index=0)
    with pytest.raises(ValueError, match="`key` must be omitted"):
        layer(x, x, key=x + 1)


def test_get_config_round_trip():
    layer = MultiHeadAttention(
        num_heads=4,
        key_dim=8,
        value_dim=8,
        num_key_value_heads=2,
        dropout=0.1,
        use_rotary_embedding=True,
        sliding_window=5,
        name="mha",
    )
    clone = MultiHeadAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
