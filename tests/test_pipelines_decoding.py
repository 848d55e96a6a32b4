"""Decoding over the KV cache: greedy, top-k/top-p samplers and beam search."""

import numpy as np
from keras import ops

from keras_transformer_pipelines import decoding
from keras_transformer_pipelines.synthetic import END, reversal_data


def _expected(data):
    return data["targets"]  # the reversal followed by END, then padding


def test_greedy_decoding_reverses_sequences(trained_reversal):
    model, _ = trained_reversal
    data = reversal_data(64, seed=11)
    got = np.asarray(decoding.translate_ids(model, data["encoder_token_ids"], max_length=13))
    exact = (got == _expected(data)).all(axis=1).mean()
    assert exact >= 0.95, exact


def test_beam_one_and_top_k_one_equal_greedy(trained_reversal):
    model, _ = trained_reversal
    source = reversal_data(16, seed=12)["encoder_token_ids"]
    greedy = np.asarray(decoding.translate_ids(model, source, max_length=13))
    beam_one = np.asarray(decoding.translate_ids(model, source, max_length=13, num_beams=1))
    top_k_one = np.asarray(
        decoding.translate_ids(model, source, 13, sampler=decoding.sampler_from("top_k", k=1))
    )
    np.testing.assert_array_equal(beam_one, greedy)
    np.testing.assert_array_equal(top_k_one, greedy)
    # A beam-search run with a single beam, forced through the beam code path:
    next_fn, cache = decoding.seq2seq_step(model, source)
    tokens = np.zeros((16, 14), "int32")
    tokens[:, 0] = decoding.START_ID
    single = decoding.beam_search(next_fn, tokens, cache, 1, 1, 0.0)
    np.testing.assert_array_equal(np.asarray(decoding.truncate_after_end(single[:, 1:])), greedy)


def test_beam_search_decodes_the_task_with_four_beams(trained_reversal):
    model, _ = trained_reversal
    data = reversal_data(32, seed=13)
    got = np.asarray(
        decoding.translate_ids(
            model, data["encoder_token_ids"], 13, num_beams=4, length_penalty=0.6
        )
    )
    assert (got == _expected(data)).all(axis=1).mean() >= 0.95


def _table_step(table):
    """A step function whose next-token distribution depends only on the previous token."""
    log_table = np.log(np.asarray(table, "float32"))

    def next_fn(tokens, cache, index):
        previous = ops.take(tokens, index - 1, axis=1)
        return ops.take(ops.convert_to_tensor(log_table), previous, axis=0), None, cache

    return next_fn


def test_beam_search_finds_the_sequence_greedy_misses():
    # Tokens: 0 pad, 1 start, 2 end, 3 "a", 4 "b". Greedy takes "a" (0.6) then must end at
    # 0.5 at best: 0.30. "b" (0.4) leads to end with 0.9: 0.36, the better sequence.
    table = np.full((5, 5), 1e-6)
    table[1, 3], table[1, 4] = 0.6, 0.4
    table[3, 2], table[3, 3] = 0.5, 0.5
    table[4, 2], table[4, 3] = 0.9, 0.1
    table[2, 2] = table[0, 0] = 1.0
    table /= table.sum(1, keepdims=True)
    tokens = np.zeros((1, 4), "int32")
    tokens[0, 0] = 1
    best = np.asarray(decoding.beam_search(_table_step(table), tokens, (), 1, 2, 0.0))
    assert best[0, 1:3].tolist() == [4, 2]
    greedy = decoding.sampler_from("greedy")(
        _table_step(table), tokens, index=1, stop_token_ids=(END,)
    )
    assert np.asarray(greedy)[0, 1] == 3


def test_length_penalty_favours_longer_hypotheses():
    # From start: end now (0.55) or "a" (0.45); after "a", end for sure. Without a penalty
    # the short hypothesis wins (0.55 > 0.45); with alpha = 2 the longer one does.
    table = np.full((4, 4), 1e-6)
    table[1, 2], table[1, 3] = 0.55, 0.45
    table[3, 2] = 1.0
    table[2, 0] = table[0, 0] = 1.0
    table /= table.sum(1, keepdims=True)
    tokens = np.zeros((1, 4), "int32")
    tokens[0, 0] = 1
    short = np.asarray(decoding.beam_search(_table_step(table), tokens, (), 1, 2, 0.0))
    long = np.asarray(decoding.beam_search(_table_step(table), tokens, (), 1, 2, 2.0))
    assert short[0, 1] == 2
    assert long[0, 1:3].tolist() == [3, 2]


def test_truncate_after_end():
    tokens = np.array([[5, 2, 7, 2], [5, 6, 7, 8]])
    np.testing.assert_array_equal(
        np.asarray(decoding.truncate_after_end(tokens)), [[5, 2, 0, 0], [5, 6, 7, 8]]
    )


def test_keras_translator_compiled_with_xla_writes_what_the_plain_graph_writes(
    trained_reversal,
):
    from keras_transformer_pipelines.translation_recipe import KerasTranslator

    model, _ = trained_reversal
    data = reversal_data(16, seed=14)
    source = np.asarray(data["encoder_token_ids"], "int32")
    for beams in (1, 4):
        compiled = KerasTranslator(model, None, beam_size=beams, max_length=13, batch_size=16)
        plain = KerasTranslator(
            model, None, beam_size=beams, max_length=13, batch_size=16, jit_compile=False
        )
        got = compiled.translate_ids(source)
        np.testing.assert_array_equal(got, plain.translate_ids(source))
        assert (got == _expected(data)).all(axis=1).mean() >= 0.95
