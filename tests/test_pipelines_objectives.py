"""Loss, accuracy and schedules against hand-computed values."""

import keras
import numpy as np
import pytest

from keras_transformer_pipelines.objectives import (
    InverseSquareRootSchedule,
    MaskedAccuracy,
    MaskedSparseCrossentropy,
    cosine_with_warmup,
)


def _reference_loss(targets, logits, smoothing, padding_id=0):
    """Cross-entropy against the smoothed one-hot distribution, mean over real tokens."""
    logits = logits.astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    target_dist = np.full(logits.shape, smoothing / vocab)
    np.put_along_axis(target_dist, targets[..., None], 1 - smoothing + smoothing / vocab, -1)
    per_token = -(target_dist * log_probs).sum(-1)
    real = targets != padding_id
    return per_token[real].mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_loss_matches_smoothed_cross_entropy(rng, smoothing):
    logits = rng.standard_normal((3, 5, 7)).astype("float32")
    targets = rng.integers(1, 7, (3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0
    got = float(MaskedSparseCrossentropy(label_smoothing=smoothing)(targets, logits))
    assert got == pytest.approx(_reference_loss(targets, logits, smoothing), rel=1e-5)


def test_unsmoothed_loss_equals_keras_sparse_crossentropy_on_real_tokens(rng):
    logits = rng.standard_normal((4, 6, 9)).astype("float32")
    targets = rng.integers(1, 9, (4, 6))
    targets[1, 2:] = 0
    real = targets != 0
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = float(keras_loss(targets[real], logits[real]))
    assert float(MaskedSparseCrossentropy()(targets, logits)) == pytest.approx(expected, rel=1e-5)


def test_masked_accuracy_counts_only_real_tokens():
    targets = np.array([[1, 2, 0, 0], [3, 1, 2, 0]])
    predicted = np.array([[1, 0, 0, 0], [3, 1, 1, 3]])  # right on 1, 3, 1 of 5 real tokens
    logits = np.eye(4, dtype="float32")[predicted]
    metric = MaskedAccuracy()
    metric.update_state(targets, logits)
    assert float(metric.result()) == pytest.approx(3 / 5)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_inverse_square_root_schedule_follows_the_paper():
    schedule = InverseSquareRootSchedule(model_dim=512, warmup_steps=4000)
    for step in (0, 999, 3999, 4000, 20000):
        s = step + 1
        expected = 512**-0.5 * min(s**-0.5, s * 4000**-1.5)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    peak = float(schedule(3999))
    assert peak == pytest.approx((512 * 4000) ** -0.5, rel=1e-4)
    assert float(schedule(100)) < peak and float(schedule(10000)) < peak
    clone = InverseSquareRootSchedule.from_config(schedule.get_config())
    assert float(clone(123)) == float(schedule(123))


def test_cosine_with_warmup_rises_then_decays():
    schedule = cosine_with_warmup(1e-3, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(10)) == pytest.approx(1e-3, rel=1e-4)
    assert float(schedule(60)) == pytest.approx(5e-4, rel=1e-3)  # half way down the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        cosine_with_warmup(1e-3, 10, 10)


def test_loss_and_metric_train_a_model_with_fit(rng):
    from keras_transformer.models import Seq2SeqTransformer
    from keras_transformer_pipelines.synthetic import reversal_data

    data = reversal_data(256, max_length=6, vocabulary_size=12)
    model = Seq2SeqTransformer(12, 12, 6, 7, hidden_dim=32, num_heads=4, intermediate_dim=64)
    model.compile(
        keras.optimizers.AdamW(InverseSquareRootSchedule(32, warmup_steps=20, scale=2.0)),
        MaskedSparseCrossentropy(label_smoothing=0.1),
        metrics=[MaskedAccuracy()],
        jit_compile=False,
    )
    inputs = {k: data[k] for k in ("encoder_token_ids", "decoder_token_ids")}
    history = model.fit(inputs, data["targets"], batch_size=32, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= history["masked_accuracy"][-1] <= 1.0
