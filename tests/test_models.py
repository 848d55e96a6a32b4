"""Models: .keras round trips, cached decoding, and learning small tasks with fit."""

import keras
import numpy as np
import pytest

from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64, dropout=0.1)


def _ids(rng, batch=3, length=12, vocab=50, pad_from=9):
    ids = rng.integers(3, vocab, (batch, length)).astype("int32")
    ids[0, pad_from:] = 0
    return ids


def _models(rng):
    ids = _ids(rng)
    return [
        (
            Seq2SeqTransformer(50, 60, 12, 12, **SMALL, num_key_value_heads=2),
            {"encoder_token_ids": ids, "decoder_token_ids": ids},
        ),
        (
            Seq2SeqTransformer(
                50,
                60,
                12,
                12,
                **SMALL,
                position_encoding="learned",
                normalize_first=True,
                tie_output_embeddings=True,
            ),
            {"encoder_token_ids": ids, "decoder_token_ids": ids},
        ),
        (TransformerLanguageModel(50, 12, **SMALL, num_key_value_heads=1, sliding_window=4), ids),
        (SequenceClassifier(50, 12, 3, **SMALL, pooling="max"), ids),
        (TokenClassifier(50, 12, 5, **SMALL, gated_feedforward=True, activation="silu"), ids),
    ]


def test_keras_file_round_trip_gives_identical_outputs(rng, tmp_path):
    for index, (model, inputs) in enumerate(_models(rng)):
        expected = np.asarray(model(inputs))
        path = tmp_path / f"model_{index}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(np.asarray(loaded(inputs)), expected)
        assert loaded.get_config() == model.get_config()


def test_get_config_round_trip(rng):
    for model, _ in _models(rng):
        clone = type(model).from_config(model.get_config())
        assert clone.get_config() == model.get_config()


@pytest.mark.parametrize(
    "kv_heads, position", [(None, "sinusoidal"), (2, "learned"), (1, "rotary")]
)
def test_seq2seq_cached_decoding_equals_full_forward(rng, kv_heads, position):
    model = Seq2SeqTransformer(
        50, 60, 12, 10, **SMALL, num_key_value_heads=kv_heads, position_encoding=position
    )
    source = _ids(rng)
    target = rng.integers(3, 60, (3, 10)).astype("int32")
    full = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    encoder_output, source_mask = model.encode(source)
    cross = model.cross_attention_cache(encoder_output)
    cache = model.init_cache(3)
    steps = []
    for index in range(10):
        logits, cache = model.decode(target[:, index : index + 1], cache, index, cross, source_mask)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("kv_heads, position", [(2, "rotary"), (None, "learned")])
def test_language_model_prefill_then_steps_equals_full_forward(rng, kv_heads, position):
    model = TransformerLanguageModel(
        50, 16, **SMALL, num_key_value_heads=kv_heads, position_encoding=position
    )
    ids = rng.integers(3, 50, (2, 11)).astype("int32")
    full = np.asarray(model(ids))
    cache = model.init_cache(2)
    logits, cache = model.call_with_cache(ids[:, :5], cache, 0)  # prefill
    steps = [np.asarray(logits)]
    for index in range(5, 11):
        logits, cache = model.call_with_cache(ids[:, index : index + 1], cache, index)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_model_input_errors_are_one_line_value_errors(rng):
    model = Seq2SeqTransformer(50, 60, 12, 12, **SMALL)
    with pytest.raises(ValueError, match="inputs must be a dict with 'encoder_token_ids'"):
        model(_ids(rng))
    with pytest.raises(ValueError, match=r"longer than the model's maximum length 12"):
        model.encode(np.ones((2, 20), "int32"))
    lm = TransformerLanguageModel(50, 12, **SMALL)
    with pytest.raises(ValueError, match=r"`token_ids` must be \[batch, length\] token ids"):
        lm(np.ones((2, 3, 4), "int32"))
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_dim=32"):
        SequenceClassifier(50, 12, 2, hidden_dim=32, num_heads=3)
    with pytest.raises(ValueError, match="position_encoding must be"):
        TokenClassifier(50, 12, 2, position_encoding="alibi")


def test_reversal_task_reaches_99_percent_token_accuracy(trained_reversal):
    _, result = trained_reversal
    assert result["token_accuracy"] >= 0.99, result


def test_classifiers_learn_simple_rules(rng):
    keras.utils.set_random_seed(0)
    ids = rng.integers(3, 30, (2000, 10)).astype("int32")
    lengths = rng.integers(4, 11, 2000)
    ids[np.arange(10)[None, :] >= lengths[:, None]] = 0
    labels = (ids == 7).any(1).astype("int32")  # does the sequence contain token 7?
    tags = np.where(ids == 0, 0, 1 + (ids % 3)).astype("int32")  # a tag per token

    classifier = SequenceClassifier(
        30, 10, 2, hidden_dim=32, num_heads=4, intermediate_dim=64, dropout=0.0, pooling="max"
    )
    classifier.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    classifier.fit(ids[:1600], labels[:1600], epochs=6, batch_size=64, verbose=0)
    accuracy = (np.argmax(classifier.predict(ids[1600:], verbose=0), -1) == labels[1600:]).mean()
    assert accuracy > 0.95

    tagger = TokenClassifier(
        30, 10, 4, hidden_dim=32, num_heads=4, intermediate_dim=64, dropout=0.0
    )
    tagger.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    tagger.fit(ids[:1600], tags[:1600], epochs=4, batch_size=64, verbose=0)
    predicted = np.argmax(tagger.predict(ids[1600:], verbose=0), -1)
    real = ids[1600:] != 0
    assert (predicted[real] == tags[1600:][real]).mean() > 0.98


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 2e-2), ("mixed_bfloat16", 1.5e-1)])
def test_mixed_precision_is_close_to_float32_and_trains(rng, policy, tolerance):
    ids = _ids(rng)
    inputs = {"encoder_token_ids": ids, "decoder_token_ids": ids}
    reference = Seq2SeqTransformer(50, 60, 12, 12, **SMALL)
    expected = np.asarray(reference(inputs))
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = Seq2SeqTransformer(50, 60, 12, 12, **SMALL)
        model(inputs)
        model.set_weights(reference.get_weights())
        logits = model(inputs)
        assert (
            keras.backend.standardize_dtype(logits.dtype) == "float32"
        )  # logits stay float32 for the loss
        np.testing.assert_allclose(np.asarray(logits), expected, atol=tolerance)
        model.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False
        )
        losses = model.fit(inputs, ids, epochs=3, verbose=0).history["loss"]
        assert np.isfinite(losses).all() and losses[-1] < losses[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")
