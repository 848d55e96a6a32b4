"""Distiller: its loss against a numpy reference, and students pulled towards their teachers."""

import doctest

import keras
import numpy as np
import pytest

import keras_transformer_pipelines.distillation as distillation_module
from keras_transformer.errors import InputProblem
from keras_transformer.models import Seq2SeqTransformer, SequenceClassifier
from keras_transformer_pipelines.distillation import (
    Distiller,
    distillation_kl,
    start_from_teacher,
    teacher_layers_for,
)
from keras_transformer_pipelines.objectives import MaskedSparseCrossentropy
from keras_transformer_pipelines.synthetic import reversal_data

SEQ2SEQ_KEYS = ("encoder_token_ids", "decoder_token_ids")


def _log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _kl(teacher_logits, student_logits, temperature=1.0):
    """Per-position KL(softmax(teacher / T) || softmax(student / T)), float64."""
    log_p = _log_softmax(teacher_logits / temperature)
    log_q = _log_softmax(student_logits / temperature)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _cross_entropy(labels, logits):
    return -np.take_along_axis(_log_softmax(logits), labels[..., None], -1)[..., 0]


def _identity_model(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Identity()])


def _distiller_loss(teacher_logits, student_logits, labels, hard_loss, sample_weight=None, **kw):
    """The Distiller's loss, with an identity teacher fed the teacher logits as its inputs."""
    shape = teacher_logits.shape[1:]
    distiller = Distiller(_identity_model(shape), _identity_model(shape), **kw)
    distiller.compile(optimizer="sgd", loss=hard_loss if distiller.alpha > 0 else None)
    loss = distiller.compute_loss(
        x=teacher_logits,
        y=labels,
        y_pred=student_logits,
        sample_weight=sample_weight,
        training=False,
    )
    return float(loss), float(distiller.distillation_loss_tracker.result())


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.0), (2.0, 0.5), (4.0, 1.0), (0.5, 0.25)])
def test_sequence_loss_matches_numpy_reference(rng, temperature, alpha):
    teacher = (3 * rng.standard_normal((3, 5, 7))).astype("float32")
    student = (2 * rng.standard_normal((3, 5, 7))).astype("float32")
    labels = rng.integers(1, 7, (3, 5)).astype("int32")
    labels[0, 3:] = 0
    labels[2, 1:] = 0
    real = labels != 0
    # Padding positions get wild logits: they must not count.
    teacher[~real] = 100.0 * rng.standard_normal((int((~real).sum()), 7))

    kl = temperature**2 * _kl(teacher, student, temperature)[real].mean()
    hard = _cross_entropy(labels, student)[real].mean()
    expected = alpha * hard + (1 - alpha) * kl

    got, got_kl = _distiller_loss(
        teacher, student, labels, MaskedSparseCrossentropy(), temperature=temperature, alpha=alpha
    )
    assert got == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert got_kl == pytest.approx(kl, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("padding_id", [0, None])
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_loss_matches_numpy_reference(rng, padding_id, weighted):
    temperature, alpha = 3.0, 0.3
    teacher = (3 * rng.standard_normal((6, 4))).astype("float32")
    student = rng.standard_normal((6, 4)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 2], "int32")  # class 0 is a class, not padding
    weights = np.array([1.0, 0.5, 2.0, 0.0, 1.0, 1.5], "float32") if weighted else np.ones(6)

    kl = temperature**2 * (_kl(teacher, student, temperature) * weights).mean()
    hard = (_cross_entropy(labels, student) * weights).mean()
    expected = alpha * hard + (1 - alpha) * kl

    got, _ = _distiller_loss(
        teacher,
        student,
        labels,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sample_weight=weights if weighted else None,
        temperature=temperature,
        alpha=alpha,
        padding_id=padding_id,
    )
    assert got == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_distillation_kl_of_identical_logits_is_zero(rng):
    logits = rng.standard_normal((2, 3, 5)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(distillation_kl(logits, logits)), 0.0)


def _random_token_ids(rng, num_examples, length, vocabulary_size):
    token_ids = rng.integers(1, vocabulary_size, (num_examples, length))
    lengths = rng.integers(3, length + 1, num_examples)
    token_ids[np.arange(length)[None] >= lengths[:, None]] = 0
    return token_ids.astype("int32")


def test_classifier_student_moves_towards_teacher(rng, tmp_path):
    keras.utils.set_random_seed(0)
    settings = dict(num_heads=2, num_layers=1, dropout=0.0)
    teacher = SequenceClassifier(30, 12, 4, hidden_dim=32, intermediate_dim=64, **settings)
    student = SequenceClassifier(30, 12, 4, hidden_dim=16, intermediate_dim=32, **settings)
    train = _random_token_ids(rng, 512, 12, 30)
    held_out = _random_token_ids(rng, 256, 12, 30)
    teacher_logits = teacher.predict(held_out, verbose=0)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    before = _kl(teacher_logits, student.predict(held_out, verbose=0)).mean()

    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.0, padding_id=None)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    assert len(distiller.trainable_weights) == len(student.trainable_weights)
    labels = np.zeros(len(train), "int32")  # unused with alpha=0
    history = distiller.fit(train, labels, batch_size=64, epochs=3, verbose=0)

    after = _kl(teacher_logits, student.predict(held_out, verbose=0)).mean()
    print(f"classifier KL(teacher || student) on held-out inputs: {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    for expected, got in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(got, expected)

    # The student is an ordinary model: it saves and reloads on its own.
    student.save(tmp_path / "student.keras")
    reloaded = keras.saving.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(
        reloaded.predict(held_out, verbose=0), student.predict(held_out, verbose=0), atol=1e-5
    )
    assert student.trainable and not teacher.trainable


def test_seq2seq_student_moves_towards_teacher():
    keras.utils.set_random_seed(0)
    settings = dict(num_encoder_layers=1, num_decoder_layers=1, num_heads=2, dropout=0.0)
    teacher = Seq2SeqTransformer(20, 20, 12, 13, hidden_dim=32, intermediate_dim=64, **settings)
    student = Seq2SeqTransformer(20, 20, 12, 13, hidden_dim=16, intermediate_dim=32, **settings)
    train, held_out = reversal_data(512, seed=0), reversal_data(128, seed=1)
    held_out_inputs = {key: held_out[key] for key in SEQ2SEQ_KEYS}
    real = held_out["targets"] != 0
    teacher_logits = teacher.predict(held_out_inputs, verbose=0)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    before = _kl(teacher_logits, student.predict(held_out_inputs, verbose=0))[real].mean()

    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.0, padding_id=0)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    distiller.fit(
        {key: train[key] for key in SEQ2SEQ_KEYS},
        train["targets"],
        batch_size=64,
        epochs=3,
        verbose=0,
    )

    after = _kl(teacher_logits, student.predict(held_out_inputs, verbose=0))[real].mean()
    print(f"seq2seq KL(teacher || student) on held-out real tokens: {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before
    for expected, got in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_unbuilt_teacher_is_built_frozen():
    settings = dict(num_heads=2, num_layers=1, dropout=0.0, hidden_dim=16, intermediate_dim=32)
    teacher = SequenceClassifier(30, 8, 3, **settings)
    student = SequenceClassifier(30, 8, 3, **settings)
    distiller = Distiller(student, teacher, padding_id=None)
    distiller(np.ones((2, 8), "int32"))
    assert teacher.built and teacher.weights
    assert not any(variable.trainable for variable in teacher.weights)
    assert [v.path for v in distiller.trainable_weights] == [
        v.path for v in student.trainable_weights
    ]


def test_config_round_trip():
    settings = dict(num_heads=2, num_layers=1, dropout=0.0, intermediate_dim=32)
    distiller = Distiller(
        SequenceClassifier(30, 8, 3, hidden_dim=8, **settings),
        SequenceClassifier(30, 8, 3, hidden_dim=16, **settings),
        temperature=3.0,
        alpha=0.25,
        padding_id=None,
    )
    restored = Distiller.from_config(distiller.get_config())
    assert (restored.temperature, restored.alpha, restored.padding_id) == (3.0, 0.25, None)
    assert restored.student.get_config() == distiller.student.get_config()
    assert restored.teacher.get_config() == distiller.teacher.get_config()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"padding_id": 0.5}, "padding_id"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, argument):
    with pytest.raises(ValueError, match=argument) as error:
        Distiller(_identity_model((4,)), _identity_model((4,)), **kwargs)
    assert "\n" not in str(error.value)


def test_hard_loss_is_required_when_alpha_is_positive():
    distiller = Distiller(_identity_model((4,)), _identity_model((4,)), alpha=0.5)
    with pytest.raises(ValueError, match="compile\\(loss=") as error:
        distiller.compile(optimizer="sgd")
    assert "\n" not in str(error.value)


def test_docstring_example_runs():
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(
        distillation_module, globs={"keras": keras, **vars(distillation_module)}
    ):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize(
    "teacher_count, student_count, expected",
    [
        (3, 1, [2]),
        (1, 1, [0]),
        (3, 2, [0, 2]),
        (3, 3, [0, 1, 2]),
        (6, 3, [0, 2, 5]),
        (3, 6, [0, 0, 1, 1, 2, 2]),
    ],
)
def test_teacher_layers_for_spreads_and_repeats(teacher_count, student_count, expected):
    assert teacher_layers_for(teacher_count, student_count) == expected


def test_teacher_layers_for_refuses_empty_stacks():
    with pytest.raises(InputProblem, match="layer counts must be >= 1"):
        teacher_layers_for(0, 1)


def _seq2seq(encoder_layers, decoder_layers, hidden_dim=32, seed=0):
    keras.utils.set_random_seed(seed)
    model = Seq2SeqTransformer(
        20, 20, 12, 13, num_encoder_layers=encoder_layers, num_decoder_layers=decoder_layers,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, num_heads=2, dropout=0.0,
    )  # fmt: skip
    model.ensure_built()
    return model


def test_student_started_from_teacher_copies_its_encoder_and_chosen_layers():
    teacher, student = _seq2seq(2, 3, seed=0), _seq2seq(2, 1, seed=1)
    tokens = reversal_data(8, seed=2)
    start_from_teacher(student, teacher)
    # The same encoder, to the last bit: the student's memory is its teacher's.
    for got, expected in zip(
        student.encode(tokens["encoder_token_ids"]), teacher.encode(tokens["encoder_token_ids"])
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected)
        )
    # Its one decoder layer is the teacher's last; the output head and norms are copied.
    for got, expected in zip(student.decoder.layers[0].weights, teacher.decoder.layers[2].weights):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    for name in ("output_head", "decoder_embedding"):
        for got, expected in zip(getattr(student, name).weights, getattr(teacher, name).weights):
            np.testing.assert_array_equal(got.numpy(), expected.numpy())

    # A student of the teacher's depth becomes its copy: the same logits.
    twin = _seq2seq(2, 3, seed=3)
    inputs = {key: tokens[key] for key in SEQ2SEQ_KEYS}
    assert not np.allclose(twin.predict(inputs, verbose=0), teacher.predict(inputs, verbose=0))
    start_from_teacher(twin, teacher)
    np.testing.assert_array_equal(
        twin.predict(inputs, verbose=0), teacher.predict(inputs, verbose=0)
    )


def test_student_of_another_width_is_refused_a_teacher_start():
    teacher, student = _seq2seq(1, 1, hidden_dim=32), _seq2seq(1, 1, hidden_dim=16)
    with pytest.raises(InputProblem, match="initialize: random"):
        start_from_teacher(student, teacher)
    classifier = SequenceClassifier(50, 8, 3, hidden_dim=16, intermediate_dim=32, num_heads=2)
    with pytest.raises(InputProblem, match="needs seq2seq models"):
        start_from_teacher(classifier, teacher)
