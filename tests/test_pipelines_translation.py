"""Tokenizers, the translation input pipeline, recipes and the command line."""

import json
from collections import Counter

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from keras_transformer_pipelines import cli, translation_recipe
from keras_transformer_pipelines.config import ConfigError, load_recipe, parse_override
from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv
from keras_transformer_pipelines.tokenizers import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from keras_transformer_pipelines.translation_data import translation_dataset

TEXTS = [
    "Open the file…",
    "Ouvrir le fichier « rapport.txt » ?",
    "Impossible d'enregistrer le document\u00a0: disque plein.",
    "L'élève a lu 3 livres — naïve façon, cœur ouvert.",
    "Unicode: 東京 🚀 ok",
]


@pytest.fixture(scope="module")
def pairs():
    return word_translation_pairs(300, seed=3)


@pytest.fixture
def tokenizer(pairs):  # per test: seeding (conftest) invalidates SentencePiece ops
    return train_tokenizer([text for pair in pairs for text in pair] + TEXTS[:4], 400)


def test_sentencepiece_round_trips_real_text_byte_for_byte(tokenizer):
    ids = tokenizer(TEXTS)
    assert [tokenizer.detokenize([row])[0] for row in ids] == TEXTS
    # Characters never seen in training (CJK, emoji) come back through byte pieces, not <unk>.
    assert UNK_ID not in ids[-1]


def test_special_token_ids_are_fixed(tokenizer):
    pieces = [tokenizer.id_to_token(i) for i in (PAD_ID, START_ID, END_ID, UNK_ID)]
    assert pieces == ["<pad>", "<s>", "</s>", "<unk>"]
    wordpiece = train_tokenizer(TEXTS * 3, 200, kind="wordpiece")
    assert wordpiece.get_vocabulary()[:4] == ["[PAD]", "[START]", "[END]", "[UNK]"]


@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_saved_tokenizer_gives_the_same_ids(tmp_path, pairs, kind):
    texts = [text for pair in pairs for text in pair]
    original = train_tokenizer(texts, 320, kind=kind)
    save_tokenizer(original, tmp_path)
    vocabulary = (tmp_path / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocabulary == original.get_vocabulary()
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == kind
    loaded = load_tokenizer(tmp_path)
    assert loaded(texts[:50]) == original(texts[:50])


def test_tokenizer_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="smaller than required_chars") as error:
        train_tokenizer(TEXTS, 40)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="kind must be one of"):
        train_tokenizer(TEXTS, 400, kind="bpe-ish")
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path)


def _examples(dataset):
    """Every real example of a batched dataset as (source, decoder, labels) tuples."""
    examples = []
    for inputs, labels in dataset:
        source, decoder = inputs["encoder_token_ids"].numpy(), inputs["decoder_token_ids"].numpy()
        for s, d, y in zip(source, decoder, labels.numpy(), strict=True):
            examples.append((tuple(s[s != 0]), tuple(d[d != 0]), tuple(y[y != 0])))
    return examples


def test_bucketed_batches_respect_the_budget_and_hold_every_example_once(pairs, tokenizer):
    max_tokens = 256
    dataset = translation_dataset(pairs, tokenizer, 12, 12, max_tokens=max_tokens, shuffle=True)
    shapes = set()
    for inputs, labels in dataset:
        for ids in (inputs["encoder_token_ids"], inputs["decoder_token_ids"], labels):
            assert ids.shape[0] * ids.shape[1] <= max_tokens
        shapes.add(tuple(labels.shape))
    assert len(shapes) > 2, "batches come in several bucket shapes"

    expected = []
    for source, target in zip(tokenizer([s for s, _ in pairs]), tokenizer([t for _, t in pairs])):
        target = list(target[:11])
        expected.append((tuple(source[:12]), tuple([START_ID] + target), tuple(target + [END_ID])))
    first, second = _examples(dataset), _examples(dataset)
    assert Counter(first) == Counter(expected) == Counter(second)
    assert first != second, "a new order every epoch"


def test_fixed_batches_pad_to_the_maximum_and_shards_split_the_data(pairs, tokenizer):
    dataset = translation_dataset(pairs, tokenizer, 16, 14, batch_size=32)
    inputs, labels = next(iter(dataset))
    assert inputs["encoder_token_ids"].shape == (32, 16) and labels.shape == (32, 14)

    shards = [
        _examples(
            translation_dataset(
                pairs,
                tokenizer,
                16,
                14,
                max_tokens=512,
                input_context=tf.distribute.InputContext(2, index, 1),
            )
        )
        for index in (0, 1)
    ]
    assert len(shards[0]) + len(shards[1]) == len(pairs)
    assert Counter(shards[0] + shards[1]) == Counter(_examples(dataset))


def test_pipelines_survive_reseeding_after_the_tokenizer_was_made(pairs, tokenizer):
    keras.utils.set_random_seed(7)  # clears TensorFlow's kernel cache in eager mode
    dataset = translation_dataset(pairs, tokenizer, 12, 12, max_tokens=256)
    assert len(_examples(dataset)) == len(pairs)


def test_empty_pairs_are_dropped(tokenizer):
    dataset = translation_dataset(
        [("", "X."), ("red cat", "CAT RED."), ("dog", "")], tokenizer, 8, 8, batch_size=4
    )
    assert len(_examples(dataset)) == 1


def _write_recipe(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_recipe_errors_name_file_and_key(tmp_path):
    bad_key = _write_recipe(
        tmp_path / "a.yaml", {"data": {"train": "t.tsv"}, "training": {"lr": 1}}
    )
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown key 'training\.lr'"):
        load_recipe(bad_key)
    bad_type = _write_recipe(tmp_path / "b.yaml", {"data": {"train": "t.tsv", "max_tokens": "big"}})
    with pytest.raises(ConfigError, match=r"'data\.max_tokens' must be"):
        load_recipe(bad_type)
    bad_choice = _write_recipe(
        tmp_path / "c.yaml", {"data": {"train": "t.tsv"}, "training": {"schedule": "linear"}}
    )
    with pytest.raises(ConfigError, match="must be one of"):
        load_recipe(bad_choice)
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_recipe(tmp_path / "d.json")


def test_recipe_paths_and_overrides(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"data": {"train": "data/train.tsv"}, "output_dir": "out"}))
    recipe = load_recipe(path, dict([parse_override("training.train_steps=400")]))
    assert recipe.data.train == str(tmp_path / "data" / "train.tsv")
    assert recipe.output_dir == str(tmp_path / "out")
    assert recipe.training.train_steps == 400 and isinstance(recipe.training.train_steps, int)
    assert recipe.model.hidden_dim == 256  # a default
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train_steps")


def test_cli_reports_a_bad_recipe_in_one_line_with_exit_code_2(tmp_path, capsys):
    recipe = _write_recipe(tmp_path / "r.yaml", {"data": {"train": "x.tsv"}, "modle": {}})
    assert cli.run(["train", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown key 'modle'" in error
    good = _write_recipe(tmp_path / "g.yaml", {"data": {"train": "missing.tsv"}})
    assert cli.run(["evaluate", str(good)]) == 2
    assert "no trained model" in capsys.readouterr().err


TOY_MODEL = {
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "hidden_dim": 64,
    "num_heads": 4,
    "intermediate_dim": 128,
    "dropout": 0.0,
}


def test_cli_trains_evaluates_and_translates_a_toy_language(tmp_path, capsys):
    write_tsv(word_translation_pairs(3000, max_words=6, seed=0), tmp_path / "train.tsv")
    write_tsv(word_translation_pairs(60, max_words=6, seed=1), tmp_path / "valid.tsv")
    write_tsv(word_translation_pairs(60, max_words=6, seed=2), tmp_path / "test.tsv")
    recipe = _write_recipe(
        tmp_path / "toy.yaml",
        {
            "output_dir": "run",
            "data": {
                "train": "train.tsv",
                "valid": "valid.tsv",
                "test": "test.tsv",
                "max_source_length": 24,
                "max_target_length": 24,
                "max_tokens": 1024,
            },
            "tokenizer": {"vocabulary_size": 600},
            "model": TOY_MODEL,
            "training": {
                "train_steps": 400,
                "steps_per_checkpoint": 100,
                "learning_rate": 0.003,
                "warmup_steps": 50,
                "verbose": 0,
            },
            "decoding": {"beam_size": 3, "batch_size": 32},
        },
    )
    assert cli.run(["train", str(recipe)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["steps"] == 400
    summary_teacher_parameters = summary["parameters"]
    for name in ("model.keras", "best.keras", "history.csv", "tokenizer/tokenizer.json"):
        assert (tmp_path / "run" / name).is_file(), name

    assert cli.run(["evaluate", str(recipe), "--model", "model"]) == 0
    scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scores["bleu"] > 60 and scores["chrf"] > 70, scores
    # The main job's evaluation shows a progress bar over the sentences, and scores the same.
    shown = translation_recipe.evaluate(load_recipe(recipe), "model", limit=40, progress=True)
    bar = capsys.readouterr().out
    assert "40/40" in bar and "sentence" in bar, bar
    assert shown["bleu"] == translation_recipe.evaluate(load_recipe(recipe), "model", 40)["bleu"]
    # Tuning scores the validation split and leaves the test split's evaluation.json alone.
    written = (tmp_path / "run" / "evaluation.json").read_text()
    valid = translation_recipe.evaluate(load_recipe(recipe), "model", 40, split="valid")
    assert valid["split"] == "valid" and valid["bleu"] > 60, valid
    assert (tmp_path / "run" / "evaluation.json").read_text() == written
    with pytest.raises(ValueError, match="split must be 'test' or 'valid', not 'train'"):
        translation_recipe.evaluate(load_recipe(recipe), "model", split="train")

    source = tmp_path / "in.txt"
    source.write_text("red cat open\nblue river\n")
    assert cli.run(["translate", str(recipe), "--input", str(source), "--model", "model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["OPEN CAT RED.", "RIVER BLUE."]
    assert len(lines) == 2

    assert cli.run(["visualize", str(recipe), "red cat open", "--model", "model"]) == 0
    shown = json.loads(capsys.readouterr().out.splitlines()[-1])
    # Three attention maps, then the training curve of the run.
    assert shown["translation"] == "OPEN CAT RED." and len(shown["files"]) == 4
    assert shown["files"][-1].endswith("training_curve.png")
    for path in shown["files"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # A smaller student distilled from this run, through the same command.
    values = yaml.safe_load(recipe.read_text())
    values["output_dir"] = "student"
    values["model"] = dict(TOY_MODEL, num_encoder_layers=1, num_decoder_layers=1, hidden_dim=32)
    values["training"].update(train_steps=200)
    values["distillation"] = {"teacher": "run", "temperature": 2.0, "alpha": 0.5}
    student_recipe = _write_recipe(tmp_path / "student.yaml", values)
    assert cli.run(["train", str(student_recipe)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["parameters"] < 0.5 * summary_teacher_parameters
    assert "final_distillation_loss" in summary
    assert (tmp_path / "student" / "tokenizer" / "sentencepiece.model").read_bytes() == (
        tmp_path / "run" / "tokenizer" / "sentencepiece.model"
    ).read_bytes()
    assert cli.run(["evaluate", str(student_recipe), "--model", "model"]) == 0
    student_scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert student_scores["bleu"] > 40, student_scores


class _LogitsAtEnd(keras.callbacks.Callback):
    """The trained model's logits on fixed inputs, computed in the policy it trained in."""

    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs

    def on_train_end(self, logs=None):
        self.logits = keras.ops.convert_to_numpy(self.model(self.inputs, training=False))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_in_half_compute_and_loads_back_in_float32(tmp_path, policy):
    from keras_transformer_pipelines.config import recipe_from_dict
    from keras_transformer_pipelines.training import load_model
    from keras_transformer_pipelines.translation_recipe import train

    write_tsv(word_translation_pairs(200, seed=0), tmp_path / "train.tsv")
    recipe = recipe_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "data": {"train": str(tmp_path / "train.tsv"), "max_tokens": 256},
            "tokenizer": {"vocabulary_size": 600},
            "model": dict(TOY_MODEL, hidden_dim=32, num_encoder_layers=1, num_decoder_layers=1),
            "training": {
                "train_steps": 8,
                "steps_per_checkpoint": 4,
                "warmup_steps": 2,
                "precision": policy,
                "verbose": 0,
            },
        }
    )
    ids = np.random.default_rng(0).integers(4, 600, (2, 12)).astype("int32")
    inputs = {"encoder_token_ids": ids, "decoder_token_ids": ids}
    probe = _LogitsAtEnd(inputs)
    try:
        summary = train(recipe, callbacks=[probe])
        assert keras.mixed_precision.global_policy().name == "float32"  # put back after fit
        model = load_model(tmp_path / "run", "model")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert summary["steps"] == 8 and np.isfinite(summary["final_loss"])
    assert summary["precision"] == policy
    assert all(weight.dtype == "float32" for weight in model.weights)
    # Loaded back, the same weights compute in float32 (export and parity see float32):
    # close to the half-precision logits of training, but not equal to them.
    assert model.dtype_policy.name == "float32"
    logits = keras.ops.convert_to_numpy(model(inputs, training=False))
    difference = np.abs(logits - probe.logits).max()
    assert 0 < difference < 0.05 * np.abs(logits).max() + 0.05, difference
