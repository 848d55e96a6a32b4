"""Encoder/decoder layers: parity with keras-nlp, causality, padding invariance, caching."""

import keras_nlp
import numpy as np
import pytest
from peers import copy_keras_nlp_decoder, copy_keras_nlp_encoder

from keras_transformer.layers import (
    FeedForward,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

B, T, S, D = 2, 7, 9, 32


def _inputs(rng):
    decoder_seq = rng.standard_normal((B, T, D)).astype("float32")
    encoder_seq = rng.standard_normal((B, S, D)).astype("float32")
    decoder_pad = np.ones((B, T), bool)
    decoder_pad[1, 5:] = False
    encoder_pad = np.ones((B, S), bool)
    encoder_pad[0, 6:] = False
    return decoder_seq, encoder_seq, decoder_pad, encoder_pad


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_layer_matches_keras_nlp(rng, normalize_first):
    _, x, _, pad = _inputs(rng)
    theirs = keras_nlp.layers.TransformerEncoder(64, 4, normalize_first=normalize_first)
    ours = TransformerEncoderLayer(4, 64, normalize_first=normalize_first)
    theirs(x)
    ours(x)
    copy_keras_nlp_encoder(ours, theirs)
    expected = np.asarray(theirs(x, padding_mask=pad))
    got = np.asarray(ours(x, padding_mask=pad))
    np.testing.assert_allclose(got[pad], expected[pad], atol=1e-5)  # real positions


@pytest.mark.parametrize("normalize_first", [False, True])
def test_decoder_layer_matches_keras_nlp(rng, normalize_first):
    dec, enc, dec_pad, enc_pad = _inputs(rng)
    theirs = keras_nlp.layers.TransformerDecoder(64, 4, normalize_first=normalize_first)
    ours = TransformerDecoderLayer(4, 64, normalize_first=normalize_first)
    theirs(dec, enc)
    ours(dec, enc)
    copy_keras_nlp_decoder(ours, theirs)
    expected = np.asarray(
        theirs(dec, enc, decoder_padding_mask=dec_pad, encoder_padding_mask=enc_pad)
    )
    got = np.asarray(ours(dec, enc, decoder_padding_mask=dec_pad, encoder_padding_mask=enc_pad))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_decoder_only_layer_matches_keras_nlp(rng):
    dec, _, dec_pad, _ = _inputs(rng)
    theirs = keras_nlp.layers.TransformerDecoder(64, 4)
    ours = TransformerDecoderLayer(4, 64)
    theirs(dec)
    ours(dec)
    assert ours.cross_attention is None
    copy_keras_nlp_decoder(ours, theirs)
    np.testing.assert_allclose(
        ours(dec, decoder_padding_mask=dec_pad),
        theirs(dec, decoder_padding_mask=dec_pad),
        atol=1e-5,
    )


def test_decoder_output_at_t_ignores_tokens_after_t(rng):
    dec, enc, _, _ = _inputs(rng)
    stack = TransformerDecoder(2, num_heads=4, intermediate_dim=64, num_key_value_heads=2)
    base = np.asarray(stack(dec, enc))
    for t in range(T - 1):
        changed = dec.copy()
        changed[:, t + 1 :] = rng.standard_normal(changed[:, t + 1 :].shape)
        out = np.asarray(stack(changed, enc))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-3  # the future did change


@pytest.mark.parametrize("normalize_first", [False, True])
def test_appending_padding_does_not_change_real_positions(rng, normalize_first):
    dec, enc, _, _ = _inputs(rng)
    encoder = TransformerEncoder(
        2, num_heads=4, intermediate_dim=64, normalize_first=normalize_first
    )
    decoder = TransformerDecoder(
        2, num_heads=4, intermediate_dim=64, normalize_first=normalize_first
    )
    enc_out = np.asarray(encoder(enc))
    dec_out = np.asarray(decoder(dec, enc_out))
    pad = 4
    enc_long = np.concatenate([enc, rng.standard_normal((B, pad, D)).astype("float32")], 1)
    dec_long = np.concatenate([dec, rng.standard_normal((B, pad, D)).astype("float32")], 1)
    enc_mask = np.arange(S + pad)[None, :].repeat(B, 0) < S
    dec_mask = np.arange(T + pad)[None, :].repeat(B, 0) < T
    enc_out_long = np.asarray(encoder(enc_long, padding_mask=enc_mask))
    dec_out_long = np.asarray(
        decoder(
            dec_long, enc_out_long, decoder_padding_mask=dec_mask, encoder_padding_mask=enc_mask
        )
    )
    np.testing.assert_allclose(enc_out_long[:, :S], enc_out, atol=1e-5)
    np.testing.assert_allclose(dec_out_long[:, :T], dec_out, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
@pytest.mark.parametrize("normalize_first", [False, True])
def test_stack_cached_decoding_equals_full_pass(rng, kv_heads, normalize_first):
    dec, enc, _, enc_pad = _inputs(rng)
    decoder = TransformerDecoder(
        2,
        num_heads=4,
        intermediate_dim=64,
        num_key_value_heads=kv_heads,
        normalize_first=normalize_first,
    )
    full = np.asarray(decoder(dec, enc, encoder_padding_mask=enc_pad))
    cross = decoder.compute_cross_attention_cache(enc)
    cache = decoder.init_cache(B, T + 2)
    assert cache.shape == (B, 2, 2, kv_heads or 4, T + 2, 8)
    out, cache = decoder(
        dec[:, :3],
        encoder_padding_mask=enc_pad,
        self_attention_cache=cache,
        cross_attention_cache=cross,
        cache_index=0,
    )
    steps = [np.asarray(out)]
    for index in range(3, T):
        out, cache = decoder(
            dec[:, index : index + 1],
            encoder_padding_mask=enc_pad,
            self_attention_cache=cache,
            cross_attention_cache=cross,
            cache_index=index,
        )
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_attention_scores_are_returned_per_layer(rng):
    dec, enc, _, enc_pad = _inputs(rng)
    decoder = TransformerDecoder(2, num_heads=4, intermediate_dim=64)
    _, scores = decoder(dec, enc, encoder_padding_mask=enc_pad, return_attention_scores=True)
    assert len(scores) == 2
    cross = np.asarray(scores[0]["cross_attention"])
    assert cross.shape == (B, 4, T, S)
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    assert np.all(cross[0, :, :, 6:] == 0)  # padded source positions get no attention
    self_scores = np.asarray(scores[1]["self_attention"])
    assert np.all(np.triu(self_scores[0, 0], 1) == 0)


@pytest.mark.parametrize("activation, gated", [("relu", False), ("gelu", False), ("silu", True)])
def test_feedforward_matches_numpy(rng, activation, gated):
    from scipy.special import erf  # noqa: F401  (scipy ships with the TF stack)

    x = rng.standard_normal((2, 3, 8)).astype("float32")
    layer = FeedForward(16, activation=activation, gated=gated)
    got = np.asarray(layer(x))
    w1, b1 = layer.intermediate_kernel.numpy(), layer.intermediate_bias.numpy()
    w2, b2 = layer.output_kernel.numpy(), layer.output_bias.numpy()
    hidden = x @ w1 + b1
    act = {
        "relu": lambda h: np.maximum(h, 0),
        "gelu": lambda h: 0.5 * h * (1 + erf(h / np.sqrt(2))),
        "silu": lambda h: h / (1 + np.exp(-h)),
    }[activation]
    hidden = act(hidden[..., :16]) * hidden[..., 16:] if gated else act(hidden)
    np.testing.assert_allclose(got, hidden @ w2 + b2, atol=1e-5)


def test_layers_reject_heads_not_dividing_width(rng):
    with pytest.raises(ValueError, match="num_heads=5 must divide the model width 32"):
        TransformerEncoderLayer(5, 64)(np.zeros((1, 3, 32), "float32"))
    with pytest.raises(ValueError, match=r"`inputs` must have rank 3, got shape \(3, 32\)"):
        TransformerEncoderLayer(4, 64)(np.zeros((3, 32), "float32"))


def test_decoder_cross_attention_misuse_is_named(rng):
    dec, enc, _, _ = _inputs(rng)
    layer = TransformerDecoderLayer(4, 64)
    layer(dec)
    with pytest.raises(ValueError, match="built without cross-attention"):
        layer(dec, enc)
    with_cross = TransformerDecoderLayer(4, 64)
    with_cross(dec, enc)
    with pytest.raises(ValueError, match="needs encoder_sequence or cross_attention_cache"):
        with_cross(dec)


@pytest.mark.parametrize("cls", [TransformerEncoder, TransformerDecoder])
def test_stack_get_config_round_trip(cls):
    stack = cls(
        3,
        num_heads=4,
        intermediate_dim=64,
        dropout=0.1,
        normalize_first=True,
        num_key_value_heads=2,
        activation="gelu",
        name="stack",
    )
    clone = cls.from_config(stack.get_config())
    assert clone.get_config() == stack.get_config()
    assert clone.num_layers == 3 and clone.final_norm is not None
