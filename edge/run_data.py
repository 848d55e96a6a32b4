"""A finished training run's own data, for converting it: calibration and held-out batches.

Both come from the run's pipeline (the same tokenizer, truncation and special tokens as in
training): calibration batches from the shuffled train split, the parity batch from the
validation split (the test split when there is none) in file order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from keras_transformer_edge import parity
from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_pipelines.config import Recipe, recipe_from_dict

SEED = 0


@dataclasses.dataclass
class LoadedRun:
    """A finished run ready to convert: its model, tokenizer and export signatures."""

    recipe: Recipe
    model: Any
    tokenizer: Any
    tokenizer_file: Path  # the SentencePiece model the bundle ships
    kind: str  # the bundle kind (runtime.bundle.KINDS)
    endpoints: dict
    lengths: dict[str, int]
    vocabulary_size: int
    labels: list[str] | None = None
    decoding: dict = dataclasses.field(default_factory=dict)


# A pipeline run's task -> the bundle's kind.
RUN_KINDS = {
    "translation": "seq2seq",
    "language_model": "language_model",
    "classification": "classifier",
    "tagging": "tagger",
}


def load_run(
    run_dir: str | Path,
    which: str = "model",
    beam_size: int | None = None,
    prefill_length: int | None = None,
) -> LoadedRun:
    """Load a run (``which``: "model" or "best") with the signatures its bundle exports.

    ``beam_size``: rows of the ``decode_beam`` signature (translation; default: the
    recipe's); ``prefill_length``: tokens of the LM's ``prefill`` (default: 32 or less).
    """
    from keras_transformer_edge.bundle import sentencepiece_model
    from keras_transformer_edge.convert import (
        classifier_endpoints,
        language_model_endpoints,
        seq2seq_endpoints,
    )
    from keras_transformer_pipelines.task_recipes import LABEL_FILES
    from keras_transformer_pipelines.translation_recipe import load_trained

    run_dir = Path(run_dir)
    recipe = run_recipe(run_dir)
    tokenizer_file = sentencepiece_model(run_dir / "tokenizer")  # fail before loading
    model, tokenizer = load_trained(run_dir, which)
    kind = RUN_KINDS[recipe.task]
    run = dict(recipe=recipe, model=model, tokenizer=tokenizer, tokenizer_file=tokenizer_file)
    if kind == "seq2seq":
        if model.encoder_vocabulary_size != model.decoder_vocabulary_size:
            raise ValueError("source and target vocabularies differ; bundles share one tokenizer")
        beam_size = beam_size or recipe.decoding.beam_size
        return LoadedRun(
            **run,
            kind=kind,
            endpoints=seq2seq_endpoints(model, 1, beam_size),
            lengths={
                "source": model.encoder_sequence_length,
                "target": model.decoder_sequence_length,
            },
            vocabulary_size=model.decoder_vocabulary_size,
            decoding={
                "beam_size": beam_size,
                "length_penalty": recipe.decoding.length_penalty,
                "max_length": recipe.decoding.max_length,
            },
        )
    if kind == "language_model":
        prefill_length = prefill_length or min(32, model.sequence_length)
        return LoadedRun(
            **run,
            kind=kind,
            endpoints=language_model_endpoints(model, prefill_length),
            lengths={"context": model.sequence_length, "prefill": prefill_length},
            vocabulary_size=model.vocabulary_size,
            decoding={"sampler": recipe.decoding.sampler, "top_k": recipe.decoding.top_k},
        )
    labels_file = run_dir / LABEL_FILES[recipe.task]
    return LoadedRun(
        **run,
        kind=kind,
        endpoints=classifier_endpoints(model),
        lengths={"tokens": model.sequence_length},
        vocabulary_size=model.vocabulary_size,
        labels=labels_file.read_text(encoding="utf-8").split("\n")[:-1],
    )


def run_recipe(run_dir: str | Path) -> Recipe:
    """The run's recipe, its ``output_dir`` pointing at ``run_dir`` wherever it now lies."""
    run_dir = Path(run_dir)
    values = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    return dataclasses.replace(recipe_from_dict(values), output_dir=str(run_dir))


def first_batch(recipe: Recipe, model, tokenizer, split: str, count: int, shuffle: bool):
    """One batch of ``count`` examples of ``split`` as the run's pipeline makes them."""
    from keras_transformer_pipelines import task_recipes, translation_recipe
    from keras_transformer_pipelines.translation_data import translation_dataset

    if recipe.task == "translation":
        path = translation_recipe.split_paths(recipe)[split]
        pairs = translation_recipe.read_pairs(path, False)
        dataset = translation_dataset(
            pairs,
            tokenizer,
            model.encoder_sequence_length,
            model.decoder_sequence_length,
            batch_size=count,
            shuffle=shuffle,
            seed=SEED,
            cache=False,
        )
    else:
        read = task_recipes.read_split(recipe, split)
        if read is None:
            raise ValueError(f"the run's recipe names no {split} split")
        labels = task_recipes.labels_for(recipe) if recipe.task != "language_model" else None
        dataset = task_recipes.dataset_for(
            recipe, tokenizer, read[0], labels, batch_size=count, shuffle=shuffle, seed=SEED
        )
    return next(dataset.take(1).as_numpy_iterator())


def held_out_split(recipe: Recipe) -> str:
    """The split parity runs on: valid, else test, else (a run trained on all it had) train."""
    from keras_transformer_pipelines import task_recipes, translation_recipe

    for split in ("valid", "test"):
        if recipe.task == "translation":
            if split in translation_recipe.split_paths(recipe):
                return split
        elif task_recipes.read_split(recipe, split) is not None:
            return split
    return "train"


def parity_report(
    recipe: Recipe, model, tokenizer, tokenizer_file: Path, flatbuffer: bytes, count: int
) -> dict:
    """The ungated parity report of ``flatbuffer`` on ``count`` held-out examples."""
    split = held_out_split(recipe)
    batch = first_batch(recipe, model, tokenizer, split, count, shuffle=False)
    if recipe.task == "translation":
        pieces = SentencePieceBPE.load(tokenizer_file)  # the device's own detokenizer
        references = [pieces.decode([int(t) for t in row if t > parity.END_ID]) for row in batch[1]]
        report = parity.seq2seq_parity(model, flatbuffer, batch, pieces.decode, references)
    elif recipe.task == "language_model":
        report = parity.language_model_parity(model, flatbuffer, batch)
    else:
        signature = "classify" if recipe.task == "classification" else "tag"
        report = parity.classifier_parity(model, flatbuffer, batch, signature)
    examples = len(np.asarray(batch[1]))
    return {**report, "split": split, "examples": examples}
