"""Recipes for the single-sequence tasks, on the runner of ``training.py``: what
``translation_recipe.py`` is for translation, for these three (``recipe.task``)::

    task            data.train/valid/test             model                     evaluate
    classification  JSONL or CSV (text, label)        SequenceClassifier        accuracy, macro-F1
    tagging         CoNLL columns (word ... tag)      TokenClassifier           entity P/R/F1,
                                                                                token accuracy
    language_model  plain text, one example a line;   TransformerLanguageModel  perplexity
                    or data.corpus "gettext:<lang>"
                    (its translated side)

What a run leaves in ``output_dir``, besides the runner's files: ``tokenizer/``,
``labels.txt`` (classification) or ``tags.txt`` (tagging), one label a line, its id the line
number; after ``evaluate``, ``evaluation.json`` and ``predictions.txt``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_transformer.errors import InputProblem, MissingInput
from keras_transformer.models import SequenceClassifier, TokenClassifier, TransformerLanguageModel
from keras_transformer_pipelines import files, translation_recipe
from keras_transformer_pipelines.config import Recipe
from keras_transformer_pipelines.decoding import (
    language_model_step,
    sampler_from,
    truncate_after_end,
)
from keras_transformer_pipelines.metrics import accuracy, entity_f1, macro_f1, perplexity_of
from keras_transformer_pipelines.readers import (
    ReadReport,
    read_all,
    read_conll,
    read_labelled,
    read_parallel_tsv,
    read_text,
)
from keras_transformer_pipelines.text_data import (
    IGNORED,
    classification_dataset,
    language_model_dataset,
    tagging_dataset,
)
from keras_transformer_pipelines.tokenizers import END_ID, PAD_ID, START_ID
from keras_transformer_pipelines.training import fit_recipe, start_run

LABEL_FILES = {"classification": "labels.txt", "tagging": "tags.txt"}
OUTSIDE = "O"  # the tag of a word past max_length, which the model never sees


def read_split(recipe: Recipe, split: str) -> tuple[list, ReadReport] | None:
    """The records of ``split`` ("train", "valid", "test") and the reader's report; ``None``
    for a split the recipe does not name.

    Records: ``(text, label)`` (classification), ``(words, tags)`` (tagging), lines (LM).
    """
    data = recipe.data
    if data.corpus is not None:  # a language model (config.py) reads the translated side
        path = translation_recipe.split_paths(recipe)[split]
        pairs, report = read_all(read_parallel_tsv, path, data.strict)
        return [target for _, target in pairs], report
    path = getattr(data, split)
    if path is None:
        return None
    if recipe.task == "classification":
        options = {"text_field": data.text_field, "label_field": data.label_field}
        return read_all(read_labelled, path, data.strict, **options)
    return read_all(read_conll if recipe.task == "tagging" else read_text, path, data.strict)


def _texts(recipe: Recipe, records: list) -> list[str]:
    if recipe.task == "classification":
        return [text for text, _ in records]
    if recipe.task == "tagging":
        return [" ".join(words) for words, _ in records]
    return list(records)


def labels_for(recipe: Recipe, train_records: list | None = None) -> list[str]:
    """The run's label (or tag) names: read from its ``labels.txt``/``tags.txt``, or, given
    the training records, the sorted names found there, saved for ``evaluate``/``predict``."""
    path = Path(recipe.output_dir) / LABEL_FILES[recipe.task]
    if path.is_file():
        return path.read_text(encoding="utf-8").split("\n")[:-1]
    if train_records is None:
        raise MissingInput(f"{path}: no label names; run `train` first")
    if recipe.task == "classification":
        names = sorted({label for _, label in train_records})
    else:
        names = sorted({tag for _, tags in train_records for tag in tags})
    files.write_text(path, "".join(name + "\n" for name in names))
    return names


def dataset_for(
    recipe: Recipe, tokenizer, records: list, labels: list[str] | None, **batching
) -> tf.data.Dataset:
    """The task's batches of ``records``; a label the run does not know is ``IGNORED``."""
    max_length = recipe.data.max_length
    if recipe.task == "language_model":
        return language_model_dataset(records, tokenizer, max_length, **batching)
    index = {name: i for i, name in enumerate(labels)}
    if recipe.task == "classification":
        examples = [(text, index.get(label, IGNORED)) for text, label in records]
        return classification_dataset(examples, tokenizer, max_length, **batching)
    sentences = [(words, [index.get(tag, IGNORED) for tag in tags]) for words, tags in records]
    return tagging_dataset(sentences, tokenizer, max_length, **batching)


def build_model(recipe: Recipe, vocabulary_size: int, num_labels: int = 0) -> keras.Model:
    config = recipe.model
    settings = {"num_layers": config.num_layers, **config.layer_arguments()}
    length = recipe.data.max_length
    if recipe.task == "classification":
        model = SequenceClassifier(
            vocabulary_size, length, num_labels, pooling=config.pooling, **settings
        )
    elif recipe.task == "tagging":
        model = TokenClassifier(vocabulary_size, length, num_labels, **settings)
    else:
        model = TransformerLanguageModel(
            vocabulary_size, length, tie_output_embeddings=config.tie_output_embeddings, **settings
        )
    model.ensure_built()
    return model


def train(recipe: Recipe, callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Train the recipe's model; continues from ``output_dir/checkpoints`` if it has any.

    Returns the runner's summary plus the vocabulary and label counts and the malformed
    lines skipped in the train and valid files.
    """
    strategy, workdir = start_run(recipe)
    train_records, train_report = read_split(recipe, "train")
    valid_records, valid_report = read_split(recipe, "valid") or ([], ReadReport(""))
    # The translation helper trains on every text of each record; here a record has one.
    texts = [(text,) for text in _texts(recipe, train_records)]
    tokenizer = translation_recipe.tokenizer_for(recipe, texts)
    labels = labels_for(recipe, train_records) if recipe.task in LABEL_FILES else None
    with strategy.scope():
        model = build_model(recipe, tokenizer.vocabulary_size(), len(labels or ()))
        # Padding is label 0 for a language model; the classifiers' labels start at 0.
        ignored = PAD_ID if labels is None else IGNORED
        translation_recipe.compile_model(model, recipe, ignored)

    data = recipe.data
    batching = {"max_tokens": data.max_tokens, "batch_size": data.batch_size}
    summary = fit_recipe(
        recipe,
        strategy,
        workdir,
        model,
        lambda input_context=None: dataset_for(
            recipe,
            tokenizer,
            train_records,
            labels,
            shuffle=True,
            seed=recipe.training.seed,
            input_context=input_context,
            **batching,
        ),
        dataset_for(recipe, tokenizer, valid_records, labels, **batching)
        if valid_records
        else None,
        callbacks,
    )
    summary.update(
        task=recipe.task,
        vocabulary_size=tokenizer.vocabulary_size(),
        train_examples=len(train_records),
        skipped_lines=len(train_report.skipped) + len(valid_report.skipped),
    )
    if labels is not None:
        summary["labels"] = len(labels)
    return summary


def classify(model: keras.Model, tokenizer, texts: list[str], recipe: Recipe) -> np.ndarray:
    """The label id the model gives each text (in fixed batches, so in order)."""
    dataset = classification_dataset(
        [(text, 0) for text in texts],
        tokenizer,
        recipe.data.max_length,
        batch_size=recipe.decoding.batch_size,
        cache=False,
    )
    return np.concatenate([np.argmax(model.predict_on_batch(ids), -1) for ids, _ in dataset])


def tag(
    model: keras.Model, tokenizer, sentences: list[list[str]], tags: list[str], recipe: Recipe
) -> list[list[str]]:
    """Each sentence's tags, one a word: the prediction at the word's first piece."""
    dataset = tagging_dataset(
        [(words, [0] * len(words)) for words in sentences],
        tokenizer,
        recipe.data.max_length,
        batch_size=recipe.decoding.batch_size,
        cache=False,
    )
    firsts = []  # the predicted tag ids at the first pieces: the words that fit
    for ids, labels in dataset:
        best = np.argmax(model.predict_on_batch(ids), -1)
        firsts += [row[first] for row, first in zip(best, labels.numpy() != IGNORED)]
    return [
        [tags[i] for i in first] + [OUTSIDE] * (len(words) - len(first))
        for words, first in zip(sentences, firsts, strict=True)
    ]


def continue_lines(
    model: TransformerLanguageModel,
    tokenizer,
    lines: list[str],
    sampler,
    max_length: int | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Each line's continuation by the language model, up to its end token.

    The prompt is the start token and the line's pieces; a keras-nlp ``sampler`` (greedy,
    top-k) writes after it over the KV cache (``decoding.language_model_step``) until the
    end token or ``max_length`` tokens in all (default and at most: the model's context).
    """
    length = min(max_length or model.sequence_length, model.sequence_length)
    batch_size = max(1, min(batch_size, len(lines)))
    rows = -(-len(lines) // batch_size) * batch_size  # whole batches: one traced shape
    prompts = np.zeros((rows, length), np.int32)
    for row, ids in enumerate(tokenizer(list(lines))):
        ids = np.concatenate([[START_ID], np.asarray(ids, np.int32)])[:length]
        prompts[row, : len(ids)] = ids

    @tf.function
    def generate(prompt):
        next_fn, cache = language_model_step(model, batch_size)
        tokens = sampler(
            next_fn,
            prompt,
            cache=cache,
            index=1,
            mask=tf.not_equal(prompt, PAD_ID),
            stop_token_ids=(END_ID,),
        )
        return truncate_after_end(tokens)

    outputs = [
        generate(tf.constant(prompts[begin : begin + batch_size])).numpy()
        for begin in range(0, rows, batch_size)
    ]
    tokens = np.concatenate(outputs)[: len(lines)]
    prompt_lengths = (prompts[: len(lines)] != PAD_ID).sum(axis=1)
    return [
        translation_recipe.ids_to_text(tokenizer, row[start:])
        for row, start in zip(tokens, prompt_lengths)
    ]


def predict(recipe: Recipe, lines: list[str], which: str = "best") -> list[str]:
    """One output line per input line: its label (classification), its words' tags
    (tagging; words are split on whitespace) or its continuation (language model)."""
    if not lines:
        return []
    model, tokenizer = translation_recipe.load_trained(recipe.output_dir, which)
    if recipe.task == "classification":
        names = labels_for(recipe)
        return [names[i] for i in classify(model, tokenizer, lines, recipe)]
    if recipe.task == "tagging":
        sentences = [line.split() for line in lines]
        return [
            " ".join(tags) for tags in tag(model, tokenizer, sentences, labels_for(recipe), recipe)
        ]
    decoding = recipe.decoding
    if decoding.sampler == "top_k":
        sampler = sampler_from("top_k", k=decoding.top_k, seed=recipe.training.seed)
    else:
        sampler = sampler_from("greedy")
    return continue_lines(
        model, tokenizer, lines, sampler, decoding.max_length, decoding.batch_size
    )


def evaluate(recipe: Recipe, which: str = "best", limit: int | None = None) -> dict:
    """Score the model on the test split; writes ``evaluation.json`` (and ``predictions.txt``).

    classification: accuracy and macro-F1 (a test label the run never saw counts as wrong);
    tagging: entity-level precision, recall and F1 (conlleval's rules) over the words' tags,
    and the share of words tagged right; language model: perplexity over the test lines'
    tokens and end tokens, padding left out.
    """
    split = read_split(recipe, "test")
    if split is None:
        raise InputProblem(f"data.test is not set: nothing to evaluate the {recipe.task} model on")
    records, report = split[0][:limit], split[1]
    if not records:
        raise InputProblem(f"{report.path}: no test examples")
    model, tokenizer = translation_recipe.load_trained(recipe.output_dir, which)
    result: dict = {"task": recipe.task}
    predictions: list[str] = []
    if recipe.task == "classification":
        names = labels_for(recipe)
        predicted = classify(model, tokenizer, [text for text, _ in records], recipe)
        index = {name: i for i, name in enumerate(names)}
        expected = [index.setdefault(label, len(index)) for _, label in records]
        result.update(
            accuracy=accuracy(expected, predicted), macro_f1=macro_f1(expected, predicted)
        )
        predictions = [names[i] for i in predicted]
    elif recipe.task == "tagging":
        gold = [tags for _, tags in records]
        predicted = tag(
            model, tokenizer, [words for words, _ in records], labels_for(recipe), recipe
        )
        scores = entity_f1(gold, predicted)
        right = sum(g == p for tags, guess in zip(gold, predicted) for g, p in zip(tags, guess))
        result.update(scores, token_accuracy=right / sum(len(tags) for tags in gold))
        predictions = [" ".join(tags) for tags in predicted]
    else:
        data = recipe.data
        dataset = language_model_dataset(
            records,
            tokenizer,
            data.max_length,
            max_tokens=data.max_tokens,
            batch_size=data.batch_size,
            cache=False,
        )
        result["perplexity"] = perplexity_of(model, dataset, PAD_ID)
    result = {key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()}
    result.update(examples=len(records), skipped_lines=len(report.skipped), model=which)
    output = Path(recipe.output_dir)
    if predictions:
        files.write_text(output / "predictions.txt", "".join(p + "\n" for p in predictions))
    files.write_json(output / "evaluation.json", result)
    return result
