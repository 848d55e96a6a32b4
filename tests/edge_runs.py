"""Small pipeline runs and bundles that several test files build: the toy translation run
(about 15 s), a tiny translation recipe file (the resume and weight-average tests), fake runs
of the other tasks around an untrained model, and the project's sources for building a wheel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import yaml

from keras_transformer_pipelines import translation_recipe
from keras_transformer_pipelines.config import recipe_from_dict
from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv

ROOT = Path(__file__).resolve().parents[1]
PROJECT_SOURCES = (
    "setup.py",
    "README.md",
    "pyproject.toml",
    "keras_transformer",
    "pipelines",
    "edge",
    "cli",
)
SMALL = {"hidden_dim": 32, "num_heads": 4, "intermediate_dim": 64, "num_layers": 1}
LENGTH = 12  # source and target tokens of the toy translation model
VOCABULARY = 400


def tiny_recipe_file(output_dir: Path, data: Path, **training) -> Path:
    """``output_dir.yaml``: a 1+1-layer, width-16 translation recipe on ``data``'s train.tsv and
    valid.tsv, deterministic and silent, with ``training``'s keys; its path."""
    recipe = {
        "output_dir": str(output_dir),
        "data": {
            "train": str(data / "train.tsv"),
            "valid": str(data / "valid.tsv"),
            "max_source_length": 16,
            "max_target_length": 16,
            "max_tokens": 256,
        },
        "tokenizer": {"vocabulary_size": 320},
        "model": {
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "hidden_dim": 16,
            "num_heads": 2,
            "intermediate_dim": 32,
            "dropout": 0.1,
        },
        "training": {"deterministic": True, "verbose": 0, **training},
    }
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    return path


def toy_translation_run(directory: Path, steps: int = 120, precision: str = "float32") -> Path:
    """A translation run of the pipeline on the toy language (about 15 s); its folder."""
    directory.mkdir(parents=True, exist_ok=True)
    write_tsv(word_translation_pairs(1500, max_words=5, seed=0), directory / "train.tsv")
    recipe = recipe_from_dict(
        {
            "output_dir": str(directory / "run"),
            "data": {
                "train": str(directory / "train.tsv"),
                "max_source_length": LENGTH,
                "max_target_length": LENGTH,
                "max_tokens": 512,
            },
            "tokenizer": {"vocabulary_size": VOCABULARY},
            "model": {
                "num_encoder_layers": 1,
                "num_decoder_layers": 1,
                "hidden_dim": 32,
                "num_heads": 4,
                "intermediate_dim": 64,
                "dropout": 0.0,
            },
            "training": {
                "train_steps": steps,
                "steps_per_checkpoint": steps,
                "learning_rate": 0.005,
                "warmup_steps": 30,
                "label_smoothing": 0.0,
                "precision": precision,
                "verbose": 0,
            },
            "decoding": {"beam_size": 3, "length_penalty": 0.6},
        }
    )
    translation_recipe.train(recipe)
    return directory / "run"


def fake_run(directory: Path, task: str, model: keras.Model, tokenizer_dir: Path, **data) -> Path:
    """A run folder as the pipeline leaves it (recipe.json, model.keras, tokenizer/)."""
    directory.mkdir()
    model.ensure_built()
    recipe = {
        "task": task,
        "output_dir": str(directory),
        "data": {"train": "unused.txt", "max_length": model.sequence_length, **data},
        "tokenizer": {"kind": "sentencepiece", "vocabulary_size": VOCABULARY},
    }
    (directory / "recipe.json").write_text(json.dumps(recipe))
    model.save(directory / "model.keras")
    (directory / "tokenizer").mkdir()
    for name in ("tokenizer.json", "vocabulary.txt", "sentencepiece.model"):
        (directory / "tokenizer" / name).write_bytes((tokenizer_dir / name).read_bytes())
    return directory


def trim(ids) -> list[int]:
    ids = [int(token) for token in ids]
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


def copy_project(destination: Path) -> Path:
    """The files a wheel is built from, so the build leaves nothing in the checkout."""
    destination.mkdir()
    for name in PROJECT_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / name, destination / name)
    return destination
