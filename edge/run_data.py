"""A finished training run's own data, for converting it: calibration and held-out batches.

Both come from the run's pipeline (the same tokenizer, truncation and special tokens as in
training): calibration batches from the shuffled train split, the parity batch from the
validation split (the test split when there is none) in file order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from keras_transformer_edge import parity
from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_pipelines.config import Recipe, recipe_from_dict

SEED = 0


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
