"""Classification, tagging and language-model recipes: their input pipelines, their recipe keys
and the command line end to end on toy data (tiny models, a few hundred steps each)."""

import io
import json
import logging
import math
from collections import Counter

import keras_nlp
import numpy as np
import pytest
import yaml

from keras_transformer_pipelines import cli
from keras_transformer_pipelines.config import ConfigError, load_recipe
from keras_transformer_pipelines.synthetic import (
    WORDS,
    entity_sentences,
    entity_tags,
    topic_sentences,
    word_cycles,
    write_conll,
    write_jsonl,
)
from keras_transformer_pipelines.text_data import (
    IGNORED,
    classification_dataset,
    language_model_dataset,
    tagging_dataset,
)
from keras_transformer_pipelines.tokenizers import END_ID, START_ID, UNK_ID, load_tokenizer

TINY_MODEL = {
    "num_layers": 1,
    "hidden_dim": 32,
    "num_heads": 4,
    "intermediate_dim": 64,
    "dropout": 0.0,
}


def _recipe(
    tmp_path, task: str, data: dict, steps: int = 200, name: str | None = None, **sections
) -> str:
    values = {
        "task": task,
        "output_dir": "run",
        "data": {"max_length": 16, "max_tokens": 512, **data},
        "model": TINY_MODEL,
        "training": {
            "train_steps": steps,
            "steps_per_checkpoint": steps // 2,
            "learning_rate": 0.005,
            "warmup_steps": 30,
            "label_smoothing": 0.0,
            "verbose": 0,
        },
        **sections,
    }
    path = tmp_path / f"{name or task}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.splitlines()[-1])


# --- Recipe keys -------------------------------------------------------------------------------


def test_task_keys_have_defaults_per_task_and_one_line_errors(tmp_path, capsys):
    classification = load_recipe(_recipe(tmp_path, "classification", {"train": "t.jsonl"}))
    assert classification.tokenizer.kind == "wordpiece"  # the task's default
    assert classification.model.pooling == "mean" and classification.data.label_field == "label"
    chosen = _recipe(tmp_path, "tagging", {"train": "t.conll"}, tokenizer={"kind": "sentencepiece"})
    assert load_recipe(chosen).tokenizer.kind == "sentencepiece"
    language_model = load_recipe(_recipe(tmp_path, "language_model", {"corpus": "gettext:fr"}))
    assert language_model.tokenizer.kind == "sentencepiece"
    translation = tmp_path / "translation.yaml"
    translation.write_text(yaml.safe_dump({"data": {"train": "t.tsv"}}))
    assert load_recipe(translation).task == "translation"
    assert load_recipe(translation).tokenizer.kind == "sentencepiece"

    bad = {
        "must be one of": _recipe(tmp_path, "summarization", {"train": "t.txt"}),
        "data.corpus is for translation and language_model": _recipe(
            tmp_path, "tagging", {"corpus": "gettext:fr"}
        ),
        "'model.pooling' must be one of": _recipe(
            tmp_path,
            "classification",
            {"train": "t.jsonl"},
            name="pooling",
            model={"pooling": "cls"},
        ),
        "cannot hold one example": _recipe(
            tmp_path, "classification", {"train": "t.jsonl", "max_length": 600}, name="long"
        ),
    }
    for message, path in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(path)
        assert cli.run(["train", path]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error

    tagging = _recipe(tmp_path, "tagging", {"train": "t.conll"})
    assert cli.run(["translate", tagging]) == 2
    assert "translate is for translation recipes" in capsys.readouterr().err


def test_malformed_lines_are_rejected_in_one_line_when_strict(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text(
        '{"text": "red door", "label": "colour"}\n{"text": oops\n'
    )
    recipe = _recipe(tmp_path, "classification", {"train": "train.jsonl", "strict": True})
    assert cli.run(["train", recipe]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "train.jsonl:2: invalid JSON" in error


# --- Input pipelines ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece():
    vocabulary = ["[PAD]", "[START]", "[END]", "[UNK]", "dark", "blue", "##bird", "cat", "red"]
    return keras_nlp.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, oov_token="[UNK]")


def _rows(dataset) -> list[tuple[list[int], list[int]]]:
    rows = []
    for inputs, labels in dataset:
        rows += [(list(x), list(np.atleast_1d(y))) for x, y in zip(inputs.numpy(), labels.numpy())]
    return rows


def test_tagging_labels_each_word_on_its_first_piece(wordpiece):
    dark, blue, bird, cat = 4, 5, 6, 7
    sentences = [(["dark", "bluebird", "cat"], [0, 1, 2]), (["cat", " ", "dark"], [2, 0, 0])]
    rows = _rows(tagging_dataset(sentences, wordpiece, 6, batch_size=2))
    assert rows[0] == ([dark, blue, bird, cat, 0, 0], [0, 1, IGNORED, 2, IGNORED, IGNORED])
    # A word with no pieces (here a lone space) becomes the unknown piece and keeps its tag.
    assert rows[1] == ([cat, UNK_ID, dark, 0, 0, 0], [2, 0, 0, IGNORED, IGNORED, IGNORED])
    # Cut to max_length, whatever the bucket: the last word loses its place.
    bucketed = _rows(tagging_dataset(sentences[:1], wordpiece, 3, max_tokens=64))
    assert bucketed == [([dark, blue, bird], [0, 1, IGNORED])]


def test_classification_and_language_model_batches(wordpiece):
    dark, red, cat = 4, 8, 7
    rows = _rows(
        classification_dataset([("dark red cat cat", 1), ("red", 0)], wordpiece, 3, batch_size=2)
    )
    assert rows == [([START_ID, dark, red], [1]), ([START_ID, red, 0], [0])]
    rows = _rows(
        language_model_dataset(["dark red", "", "red cat dark cat"], wordpiece, 4, batch_size=4)
    )
    assert rows == [  # the empty line is dropped; a line cut short has no end token
        ([START_ID, dark, red, 0], [dark, red, END_ID, 0]),
        ([START_ID, red, cat, dark], [red, cat, dark, cat]),
    ]


# --- End to end through the command line -------------------------------------------------------


def test_classifier_learns_topics_and_reports_a_malformed_line(tmp_path, capsys, caplog):
    write_jsonl(topic_sentences(1500, seed=0), tmp_path / "train.jsonl")
    with open(tmp_path / "train.jsonl", "a") as handle:
        handle.write("{not json\n")
    write_jsonl(topic_sentences(100, seed=1), tmp_path / "valid.jsonl")
    with open(tmp_path / "test.csv", "w") as handle:  # CSV, with other column names
        handle.write("sentence,topic\n")
        handle.writelines(f"{text},{label}\n" for text, label in topic_sentences(200, seed=2))
    recipe = _recipe(
        tmp_path,
        "classification",
        {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.csv"},
        steps=150,
    )
    with caplog.at_level(logging.WARNING):
        assert cli.run(["train", recipe]) == 0
    summary = _last_json(capsys)
    assert summary["steps"] == 150 and summary["labels"] == 3 and summary["skipped_lines"] == 1
    assert "train.jsonl:1501: invalid JSON" in caplog.text
    assert (tmp_path / "run" / "labels.txt").read_text() == "animal\ncolour\nnature\n"

    fields = ["-o", "data.text_field=sentence", "-o", "data.label_field=topic"]
    assert cli.run(["evaluate", recipe, "--model", "model", *fields]) == 0
    scores = _last_json(capsys)
    assert scores["accuracy"] > 0.9 and scores["macro_f1"] > 0.9, scores
    assert scores["examples"] == 200
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text()) == scores

    lines = tmp_path / "lines.txt"
    lines.write_text("door red open\nroad cat\nmoon house river close\n")
    assert cli.run(["predict", recipe, "--input", str(lines), "--model", "model"]) == 0
    assert capsys.readouterr().out.splitlines() == ["colour", "animal", "nature"]


def test_tagger_finds_entities(tmp_path, capsys, monkeypatch):
    write_conll(entity_sentences(1500, seed=0), tmp_path / "train.conll")
    write_conll(entity_sentences(100, seed=1), tmp_path / "valid.conll")
    write_conll(entity_sentences(200, seed=2), tmp_path / "test.conll")
    recipe = _recipe(
        tmp_path,
        "tagging",
        {"train": "train.conll", "valid": "valid.conll", "test": "test.conll"},
        steps=300,
        model={**TINY_MODEL, "num_layers": 2},
    )
    assert cli.run(["train", recipe]) == 0
    assert _last_json(capsys)["labels"] == 4
    assert cli.run(["evaluate", recipe, "--model", "model"]) == 0
    scores = _last_json(capsys)
    assert scores["f1"] > 0.9 and scores["token_accuracy"] > 0.9, scores
    assert set(scores["per_type_f1"]) == {"ANIMAL", "COLOR"}

    line = "dark door light blue bird red cat"
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    assert cli.run(["predict", recipe, "--model", "model"]) == 0
    predicted = capsys.readouterr().out.splitlines()
    assert predicted == [" ".join(entity_tags(line.split()))]
    assert predicted == ["O O B-COLOR I-COLOR B-ANIMAL B-COLOR B-ANIMAL"]


def test_language_model_beats_word_frequencies_and_continues_a_line(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("\n".join(word_cycles(2000, seed=0)) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(word_cycles(100, seed=1)) + "\n")
    test_lines = word_cycles(200, seed=2)
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
    recipe = _recipe(
        tmp_path,
        "language_model",
        {"train": "train.txt", "valid": "valid.txt", "test": "test.txt", "max_length": 32},
        steps=200,
        tokenizer={"vocabulary_size": 320},
    )
    assert cli.run(["train", recipe]) == 0
    assert _last_json(capsys)["steps"] == 200
    assert cli.run(["evaluate", recipe, "--model", "model"]) == 0
    perplexity = _last_json(capsys)["perplexity"]

    # The baseline: each token (end tokens too) at its frequency in the training text.
    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer")
    train_lines = (tmp_path / "train.txt").read_text().splitlines()
    counts = Counter(t for ids in tokenizer(train_lines) for t in [*ids, END_ID])
    total = sum(counts.values())
    test_ids = [t for ids in tokenizer(test_lines) for t in [*ids, END_ID]]
    unigram = math.exp(-np.mean([math.log(counts[t] / total) for t in test_ids]))
    assert perplexity < unigram / 3, (perplexity, unigram)

    lines = tmp_path / "prompts.txt"
    lines.write_text("red green blue\nriver stone\n")
    assert cli.run(["predict", recipe, "--input", str(lines), "--model", "model"]) == 0
    continuations = capsys.readouterr().out.splitlines()
    assert len(continuations) == 2
    for prompt, continuation in zip(["red green blue", "river stone"], continuations):
        words = prompt.split() + continuation.split()
        assert len(words) > len(prompt.split()), continuation
        for before, after in zip(words, words[1:]):  # the cycle goes on
            assert WORDS.index(after) == (WORDS.index(before) + 1) % len(WORDS), continuation
