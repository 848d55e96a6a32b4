"""Attention maps: shapes, softmax and mask invariants, a by-hand check, PNG grids."""

import numpy as np
import pytest
from keras import ops

from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_pipelines import attention_maps as am

TINY = dict(hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=0.0)
LAYERS, HEADS, KEY_DIM = 2, 2, 8
START = 1
SOURCE = np.array([5, 9, 7, 3, 11, 0, 0, 0], "int32")  # 5 real tokens, trailing padding


def _randomize_biases(model, rng):
    """Non-zero biases, so that the by-hand check sees every projection term."""
    for weight in model.weights:
        if "bias" in weight.path:
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))


@pytest.fixture
def seq2seq(rng):
    model = Seq2SeqTransformer(
        20, 20, 8, 8, num_encoder_layers=LAYERS, num_decoder_layers=LAYERS, **TINY
    )
    model.ensure_built()
    _randomize_biases(model, rng)
    return model


def _own_translation(model, source, length=5, max_length=8):
    """Teacher-forced decoder input: START, then the model's greedy tokens (ids >= 3, so that
    an untrained model neither ends at once nor emits padding), zero-padded."""
    target = np.zeros((1, max_length), "int32")
    target[0, 0] = START
    for step in range(length - 1):
        logits = ops.convert_to_numpy(
            model({"encoder_token_ids": source[None], "decoder_token_ids": target})
        )
        target[0, step + 1] = 3 + int(np.argmax(logits[0, step, 3:]))
    return target[0]


def _check_rows_are_distributions(weights):
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    assert (weights >= 0).all()


def _softmax(scores, mask):
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(scores)
    return exp / exp.sum(axis=-1, keepdims=True)


def _heads(x, kernel, bias, first_column):
    """``[L, d] @ kernel[:, first:first + H*Dk] + bias`` -> ``[H, L, Dk]``."""
    columns = slice(first_column, first_column + HEADS * KEY_DIM)
    projected = x @ np.asarray(kernel)[:, columns] + np.asarray(bias)[columns]
    return projected.reshape(len(x), HEADS, KEY_DIM).transpose(1, 0, 2)


def _by_hand(attention, query_input, memory, key_mask, causal=False):
    """softmax(QK^T / sqrt(Dk)) ``[H, Tq, Tk]`` and the attention output, from the kernels."""
    q = _heads(query_input, attention.query_kernel, attention.query_bias, 0)
    k = _heads(memory, attention.key_value_kernel, attention.key_value_bias, 0)
    v = _heads(memory, attention.key_value_kernel, attention.key_value_bias, HEADS * KEY_DIM)
    mask = np.broadcast_to(key_mask[None, :], (len(query_input), len(memory)))
    if causal:
        mask = mask & np.tri(len(query_input), len(memory), dtype=bool)
    weights = _softmax(q @ k.transpose(0, 2, 1) / np.sqrt(KEY_DIM), mask[None])
    attended = (weights @ v).transpose(1, 0, 2).reshape(len(query_input), HEADS * KEY_DIM)
    output = attended @ np.asarray(attention.output_kernel) + np.asarray(attention.output_bias)
    return weights, output


def _layer_norm(x, norm):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.epsilon) * np.asarray(norm.gamma) + np.asarray(norm.beta)


def test_seq2seq_maps_shapes_and_invariants(seq2seq):
    target = _own_translation(seq2seq, SOURCE)
    s, t = int((SOURCE != 0).sum()), int((target != 0).sum())
    maps = am.attention_maps(seq2seq, SOURCE, target)
    assert list(maps) == [am.ENCODER_SELF_ATTENTION, am.DECODER_SELF_ATTENTION, am.CROSS_ATTENTION]
    assert maps[am.ENCODER_SELF_ATTENTION].shape == (LAYERS, HEADS, s, s)
    assert maps[am.DECODER_SELF_ATTENTION].shape == (LAYERS, HEADS, t, t)
    assert maps[am.CROSS_ATTENTION].shape == (LAYERS, HEADS, t, s)
    for weights in maps.values():
        assert weights.dtype == np.float32
        _check_rows_are_distributions(weights)
    decoder = maps[am.DECODER_SELF_ATTENTION]
    assert np.abs(np.triu(decoder, k=1)).max() == 0.0  # causal: nothing above the diagonal
    # Untrimmed: padding keys get exactly zero weight from every real query.
    full = am.seq2seq_attention_maps(seq2seq, SOURCE[None], target[None], trim=False)
    assert full[am.ENCODER_SELF_ATTENTION].shape == (LAYERS, HEADS, 8, 8)
    assert full[am.CROSS_ATTENTION].shape == (LAYERS, HEADS, 8, 8)
    assert (full[am.ENCODER_SELF_ATTENTION][:, :, :s, s:] == 0).all()
    assert (full[am.CROSS_ATTENTION][:, :, :t, s:] == 0).all()
    assert (full[am.DECODER_SELF_ATTENTION][:, :, :t, t:] == 0).all()
    np.testing.assert_array_equal(full[am.CROSS_ATTENTION][:, :, :t, :s], maps[am.CROSS_ATTENTION])


def test_seq2seq_first_layer_weights_match_a_by_hand_computation(seq2seq):
    target = _own_translation(seq2seq, SOURCE)
    s, t = int((SOURCE != 0).sum()), int((target != 0).sum())
    maps = am.seq2seq_attention_maps(seq2seq, SOURCE, target)
    source_real, target_real = SOURCE != 0, target != 0

    x0 = ops.convert_to_numpy(seq2seq.encoder_embedding(SOURCE[None]))[0]
    encoder_layer = seq2seq.encoder.layers[0]
    weights, _ = _by_hand(encoder_layer.self_attention, x0, x0, source_real)
    np.testing.assert_allclose(
        maps[am.ENCODER_SELF_ATTENTION][0], weights[:, :s, :s], atol=2e-5, rtol=1e-4
    )

    # Post-LN decoder layer 0: causal self-attention block, then cross-attention over the
    # encoder output, from the layer's own kernels and LayerNorm parameters.
    y0 = ops.convert_to_numpy(seq2seq.decoder_embedding(target[None]))[0]
    memory = ops.convert_to_numpy(seq2seq.encode(SOURCE[None])[0])[0]
    decoder_layer = seq2seq.decoder.layers[0]
    assert not decoder_layer.normalize_first
    weights, output = _by_hand(decoder_layer.self_attention, y0, y0, target_real, causal=True)
    np.testing.assert_allclose(
        maps[am.DECODER_SELF_ATTENTION][0], weights[:, :t, :t], atol=2e-5, rtol=1e-4
    )
    y1 = _layer_norm(y0 + output, decoder_layer.self_attention_norm)
    weights, _ = _by_hand(decoder_layer.cross_attention, y1, memory, source_real)
    np.testing.assert_allclose(
        maps[am.CROSS_ATTENTION][0], weights[:, :t, :s], atol=2e-5, rtol=1e-4
    )


def test_cached_decode_path_gives_the_full_forward_weights(seq2seq):
    target = _own_translation(seq2seq, SOURCE)
    full = am.seq2seq_attention_maps(seq2seq, SOURCE, target)
    cached = am.seq2seq_attention_maps(seq2seq, SOURCE, target, use_cache=True)
    for kind in full:
        np.testing.assert_allclose(cached[kind], full[kind], atol=1e-6)


@pytest.mark.parametrize("model_class", [SequenceClassifier, TokenClassifier])
def test_encoder_only_models(model_class):
    extra = {"num_classes": 3} if model_class is SequenceClassifier else {"num_tags": 4}
    model = model_class(20, 8, num_layers=LAYERS, **extra, **TINY)
    ids = np.array([[4, 8, 15, 16, 0, 0, 0, 0]], "int32")
    maps = am.attention_maps(model, ids)
    assert list(maps) == [am.SELF_ATTENTION]
    assert maps[am.SELF_ATTENTION].shape == (LAYERS, HEADS, 4, 4)
    _check_rows_are_distributions(maps[am.SELF_ATTENTION])
    assert np.triu(maps[am.SELF_ATTENTION], k=1).max() > 0  # bidirectional
    full = am.encoder_attention_maps(model, ids, trim=False)[am.SELF_ATTENTION]
    assert (full[:, :, :4, 4:] == 0).all()


def test_language_model_is_causal_with_grouped_query_heads():
    model = TransformerLanguageModel(20, 8, num_layers=LAYERS, num_key_value_heads=1, **TINY)
    ids = np.array([1, 6, 7, 9, 12, 3, 0, 0], "int32")
    weights = am.attention_maps(model, ids)[am.SELF_ATTENTION]
    assert weights.shape == (LAYERS, HEADS, 6, 6)  # one map per query head
    _check_rows_are_distributions(weights)
    assert np.abs(np.triu(weights, k=1)).max() == 0.0
    np.testing.assert_allclose(weights[:, :, 0, 0], 1.0, atol=1e-6)  # the first sees itself
    full = am.language_model_attention_maps(model, ids, trim=False)[am.SELF_ATTENTION]
    assert (full[:, :, :6, 6:] == 0).all()


def test_plot_attention_maps_writes_png_grids(seq2seq, tmp_path):
    target = _own_translation(seq2seq, SOURCE)
    maps = am.attention_maps(seq2seq, SOURCE, target)
    source_tokens = ["le", "$chat", "noir", "dort", "."]
    target_tokens = ["<s>"] + [f"w{i}" for i in target[1:] if i]
    paths = am.plot_attention_maps(maps, tmp_path / "plots", source_tokens, target_tokens)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"attention_{kind}.png" for kind in maps]
    for path in paths:
        with open(path, "rb") as file:
            data = file.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000, (path, len(data))
    with pytest.raises(ValueError, match="query tokens"):
        am.plot_attention_maps(maps, tmp_path, source_tokens[:-1], target_tokens)
    with pytest.raises(ValueError, match="target_tokens"):
        am.plot_attention_maps(maps, tmp_path, source_tokens)


def test_argument_errors(seq2seq):
    with pytest.raises(ValueError, match="ONE sequence"):
        am.attention_maps(seq2seq, np.ones((2, 8), "int32"), np.ones((2, 8), "int32"))
    with pytest.raises(ValueError, match="needs target_ids"):
        am.attention_maps(seq2seq, SOURCE)
    with pytest.raises(TypeError, match="unsupported"):
        am.attention_maps(object(), SOURCE)
