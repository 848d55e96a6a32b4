"""A finished run, for the tools that come after training (conversion, quantization, reports):
its recipe, model, tokenizer and labels, and its data splits as the run's own pipeline makes
them. The public door into a run folder; nothing outside ``keras_transformer_pipelines`` needs
the recipes' internals.

    run = load_finished_run("runs/en-fr")
    batch = next(iter(run.batches("valid", 256)))
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines.config import Recipe, recipe_from_dict

SPLITS = ("train", "valid", "test")


def run_recipe(run_dir: str | Path) -> Recipe:
    """The run's recipe, its ``output_dir`` pointing at ``run_dir`` wherever it now lies."""
    run_dir = Path(run_dir)
    values = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    return dataclasses.replace(recipe_from_dict(values), output_dir=str(run_dir))


@dataclasses.dataclass
class FinishedRun:
    """A trained run: everything a tool needs to convert or evaluate it."""

    directory: Path
    recipe: Recipe
    model: Any
    tokenizer: Any
    labels: list[str] | None  # class names or tags (classification, tagging)

    @property
    def task(self) -> str:
        return self.recipe.task

    def has_split(self, split: str) -> bool:
        """Whether the recipe names data for ``split`` (``train``, ``valid``, ``test``)."""
        from keras_transformer_pipelines import task_recipes, translation_recipe

        if self.task == "translation":
            return split in translation_recipe.split_paths(self.recipe)
        return task_recipes.read_split(self.recipe, split) is not None

    def held_out_split(self) -> str:
        """valid, else test, else (a run trained on all it had) train."""
        return next((s for s in ("valid", "test") if self.has_split(s)), "train")

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
        """``split`` as the run's pipeline batches it (same tokenizer, truncation, special
        tokens as in training): a ``tf.data.Dataset`` of ``(inputs, labels)``."""
        from keras_transformer_pipelines import task_recipes, translation_recipe
        from keras_transformer_pipelines.translation_data import translation_dataset

        if not self.has_split(split):
            raise InputProblem(f"the run's recipe names no {split} split")
        if self.task == "translation":
            path = translation_recipe.split_paths(self.recipe)[split]
            return translation_dataset(
                translation_recipe.read_pairs(path, False),
                self.tokenizer,
                self.model.encoder_sequence_length,
                self.model.decoder_sequence_length,
                batch_size=batch_size,
                shuffle=shuffle,
                seed=seed,
                cache=False,
            )
        records = task_recipes.read_split(self.recipe, split)[0]
        labels = None if self.task == "language_model" else task_recipes.labels_for(self.recipe)
        return task_recipes.dataset_for(
            self.recipe, self.tokenizer, records, labels, batch_size=batch_size,
            shuffle=shuffle, seed=seed,
        )  # fmt: skip

    def training_batches(self, shuffle: bool = True):
        """The train split in the recipe's own training batches (token budget, bucketing)."""
        from keras_transformer_pipelines import translation_recipe
        from keras_transformer_pipelines.translation_data import translation_dataset

        if self.task != "translation":
            raise InputProblem(f"training batches are given for translation runs, not {self.task}")
        path = translation_recipe.split_paths(self.recipe)["train"]
        return translation_dataset(
            translation_recipe.read_pairs(path, False),
            self.tokenizer,
            self.model.encoder_sequence_length,
            self.model.decoder_sequence_length,
            max_tokens=self.recipe.data.max_tokens,
            shuffle=shuffle,
            seed=self.recipe.training.seed,
        )


def load_finished_run(run_dir: str | Path, which: str = "model") -> FinishedRun:
    """The run in ``run_dir`` (``which``: "model" final, "best" best validation loss)."""
    from keras_transformer_pipelines import task_recipes
    from keras_transformer_pipelines.translation_recipe import load_trained

    run_dir = Path(run_dir)
    recipe = run_recipe(run_dir)
    model, tokenizer = load_trained(run_dir, which)
    labels = None
    if recipe.task in task_recipes.LABEL_FILES:
        text = (run_dir / task_recipes.LABEL_FILES[recipe.task]).read_text(encoding="utf-8")
        labels = text.split("\n")[:-1]
    return FinishedRun(run_dir, recipe, model, tokenizer, labels)
