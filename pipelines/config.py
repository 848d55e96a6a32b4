"""Training recipes as YAML or JSON files, read into typed, checked dataclasses.

A recipe has up to six sections; every key is optional and has the default shown in the classes
below. An unknown key or a value of the wrong type is a one-line ``ConfigError`` that names
the file and the key, so a typo never silently falls back to a default.

    task: translation  # or classification, tagging, language_model
    output_dir: runs/en-fr
    data: {corpus: "gettext:fr", max_source_length: 64, max_target_length: 64, max_tokens: 4096}
    tokenizer: {kind: sentencepiece, vocabulary_size: 6000}
    model: {hidden_dim: 256, num_heads: 4, num_encoder_layers: 3, num_decoder_layers: 3}
    training: {train_steps: 6000, steps_per_checkpoint: 200, schedule: inverse_sqrt}
    decoding: {beam_size: 4, length_penalty: 0.6}
    distillation: {teacher: runs/en-fr-big, temperature: 2.0, alpha: 0.5}   # optional

Relative paths in a recipe file are relative to that file; in overrides, to the working
directory.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines.precision import PRECISIONS


class ConfigError(InputProblem):
    """A recipe that cannot be used; the message names the file and the key."""


@dataclass
class DataConfig:
    """Where the text comes from and how it is cut and batched."""

    corpus: str | None = None  # "gettext:<lang>": built offline into <output_dir>/data
    # Used when corpus is not given: TSV (translation), JSONL or CSV (classification), CoNLL
    # columns (tagging), plain text with one example a line (language_model).
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    max_source_length: int = 64
    max_target_length: int = 64
    max_length: int = 128  # single-sequence tasks: tokens per example, start/end included
    text_field: str = "text"  # classification: the JSONL key or CSV column of the text
    label_field: str = "label"  # ... and of the label
    max_tokens: int | None = 4096  # token budget per batch (length bucketing)
    batch_size: int | None = None  # or a fixed batch padded to the maximum lengths
    strict: bool = False  # reject (instead of skip and report) malformed lines


@dataclass
class TokenizerConfig:
    kind: str = "sentencepiece"  # classification and tagging recipes default to "wordpiece"
    vocabulary_size: int = 6000
    lowercase: bool = False


@dataclass
class ModelConfig:
    """The model's arguments (the vocabulary and lengths come from data).

    ``num_encoder_layers``/``num_decoder_layers`` are the translation model's depths,
    ``num_layers`` the depth of the classifiers' encoder and of the language model.
    """

    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    num_layers: int = 2
    pooling: str = "mean"  # classification: "mean", "max" or "first" (the start token)
    hidden_dim: int = 256
    num_heads: int = 4
    intermediate_dim: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    normalize_first: bool = True
    position_encoding: str = "sinusoidal"
    scale_embeddings: bool = True
    tie_output_embeddings: bool = True
    gated_feedforward: bool = False  # SwiGLU/GEGLU-style gate on the feed-forward
    num_key_value_heads: int | None = None  # grouped-query attention; None: num_heads
    sliding_window: int | None = None  # local causal self-attention of this many keys
    layer_norm_epsilon: float = 1e-5

    def layer_arguments(self) -> dict:
        """The Transformer settings every model class takes (``TransformerModelBase``), the
        one place a recipe's model fields become model arguments."""
        names = (
            "hidden_dim",
            "num_heads",
            "intermediate_dim",
            "dropout",
            "activation",
            "gated_feedforward",
            "normalize_first",
            "layer_norm_epsilon",
            "num_key_value_heads",
            "position_encoding",
            "scale_embeddings",
            "sliding_window",
        )
        return {name: getattr(self, name) for name in names}


@dataclass
class TrainingConfig:
    train_steps: int = 6000
    steps_per_checkpoint: int = 200  # one Keras "epoch": checkpoint, validation, logs
    schedule: str = "inverse_sqrt"  # or "cosine"
    learning_rate: float = 1e-3  # the peak, reached after warmup_steps
    warmup_steps: int = 800
    weight_decay: float = 1e-4  # AdamW
    clipnorm: float | None = 1.0
    # A moving average of the weights (Keras's optimizer EMA), used for validation, best.keras
    # and model.keras; checkpoints keep the raw weights. Its window is about 1 / (1 - momentum)
    # steps, which must be well below the run's steps. None: no average.
    ema_momentum: float | None = None
    label_smoothing: float = 0.1
    precision: str = "float32"  # or mixed_bfloat16, mixed_float16, auto (see precision.py)
    early_stopping_patience: int | None = None  # in checkpoints without a better val_loss
    time_budget_s: float | None = None  # stop after this much training time
    distribution: str = "default"  # "default", "mirrored" or "multi_worker" (TF_CONFIG)
    seed: int = 0
    deterministic: bool = False  # TF op determinism (slower; for exact-resume tests)
    verbose: int = 1  # Keras progress bar: 1 bar, 2 one line per checkpoint, 0 silent


@dataclass
class DecodingConfig:
    beam_size: int = 4
    length_penalty: float = 0.6
    max_length: int | None = None  # default: the model's max_target_length (LM: its context)
    batch_size: int = 64
    sampler: str = "greedy"  # language_model: "greedy" or "top_k" (keras-nlp samplers)
    top_k: int = 10


@dataclass
class DistillationConfig:
    """Train this recipe's (smaller) model as a student of a finished run's model."""

    teacher: str | None = None  # the teacher run's output_dir; its tokenizer is reused
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha on the teacher's outputs
    # "teacher": the student starts as a copy of its teacher's embeddings and of some of its
    # layers (same width needed; distillation.start_from_teacher); "random": fresh weights
    initialize: str = "random"


@dataclass
class Recipe:
    task: str = "translation"
    output_dir: str = "runs/translation"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TASKS = ("translation", "classification", "tagging", "language_model")
_CHOICES = {
    ("", "task"): TASKS,
    ("tokenizer", "kind"): ("sentencepiece", "wordpiece"),
    ("training", "schedule"): ("inverse_sqrt", "cosine"),
    ("training", "distribution"): ("default", "mirrored", "multi_worker"),
    ("training", "precision"): PRECISIONS,
    ("model", "position_encoding"): ("learned", "sinusoidal", "rotary", "none"),
    ("model", "pooling"): ("mean", "max", "first"),
    ("decoding", "sampler"): ("greedy", "top_k"),
    ("distillation", "initialize"): ("random", "teacher"),
}
# Classification and tagging never generate text, so WordPiece serves unless a recipe says.
_DEFAULT_TOKENIZER = {"classification": "wordpiece", "tagging": "wordpiece"}
_PATH_KEYS = {
    ("data", "train"),
    ("data", "valid"),
    ("data", "test"),
    ("", "output_dir"),
    ("distillation", "teacher"),
}


def _accepts(annotation, value) -> bool:
    """Does ``value`` fit the field's type (int for float allowed, bool never for int)?"""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for option in options or (annotation,):
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
    return False


def _build(cls, values: dict, where: str, section: str, base: Path | None):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{section}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{name}' (known: {', '.join(sorted(known))})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, where, key, base)
            continue
        if not _accepts(hints[key], value):
            raise ConfigError(f"{where}: '{name}' must be {hints[key]}, got {value!r}")
        choices = _CHOICES.get((section, key))
        if choices and value not in choices:
            raise ConfigError(f"{where}: '{name}' must be one of {choices}, got {value!r}")
        if (section, key) in _PATH_KEYS and value is not None and base is not None:
            value = str((base / value).resolve()) if not Path(value).is_absolute() else value
        kwargs[key] = value
    return cls(**kwargs)


def recipe_from_dict(values: dict, where: str = "recipe", base: Path | None = None) -> Recipe:
    recipe = _build(Recipe, values, where, "", base)
    data = recipe.data
    if (data.max_tokens is None) == (data.batch_size is None):
        raise ConfigError(f"{where}: set exactly one of data.max_tokens and data.batch_size")
    if data.corpus is None and data.train is None:
        raise ConfigError(f"{where}: set data.corpus ('gettext:<lang>') or data.train")
    if data.corpus is not None and not data.corpus.startswith("gettext:"):
        raise ConfigError(f"{where}: data.corpus must look like 'gettext:fr', got {data.corpus!r}")
    momentum = recipe.training.ema_momentum
    if momentum is not None and not 0.0 < momentum < 1.0:
        raise ConfigError(f"{where}: training.ema_momentum must be in (0, 1), got {momentum}")
    if recipe.training.train_steps < recipe.training.steps_per_checkpoint:
        raise ConfigError(f"{where}: training.train_steps must be >= steps_per_checkpoint")
    if recipe.task != "translation":
        _check_single_sequence_task(recipe, where)
        if "kind" not in (values.get("tokenizer") or {}):
            recipe.tokenizer.kind = _DEFAULT_TOKENIZER.get(recipe.task, recipe.tokenizer.kind)
    return recipe


def _check_single_sequence_task(recipe: Recipe, where: str) -> None:
    """The keys that classification, tagging and language modelling read, checked."""
    data, task = recipe.data, recipe.task
    if data.corpus is not None and task != "language_model":
        raise ConfigError(
            f"{where}: data.corpus is for translation and language_model recipes; "
            f"a {task} recipe reads data.train"
        )
    if recipe.distillation.teacher is not None:
        raise ConfigError(f"{where}: distillation is for translation recipes, not {task}")
    if data.max_length < 2:
        raise ConfigError(f"{where}: data.max_length must be >= 2, got {data.max_length}")
    if data.max_tokens is not None and data.max_tokens < data.max_length:
        raise ConfigError(
            f"{where}: data.max_tokens={data.max_tokens} cannot hold one example of "
            f"data.max_length={data.max_length}"
        )
    if recipe.model.num_layers < 1:
        raise ConfigError(f"{where}: model.num_layers must be >= 1, got {recipe.model.num_layers}")
    if task == "classification" and not (data.text_field and data.label_field):
        raise ConfigError(f"{where}: data.text_field and data.label_field must not be empty")
    if recipe.decoding.top_k < 1:
        raise ConfigError(f"{where}: decoding.top_k must be >= 1, got {recipe.decoding.top_k}")


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read a ``.yaml``/``.yml``/``.json`` recipe; ``overrides`` are merged per section."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {str(error).splitlines()[0]}") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        if (section, key) in _PATH_KEYS and isinstance(value, str):
            value = str(Path(value).resolve())  # paths given on a command line: from the cwd
        target = values.setdefault(section, {}) if section else values
        target[key] = value
    return recipe_from_dict(values, str(path), path.parent)


def parse_override(text: str) -> tuple[str, object]:
    """``"training.train_steps=100"`` -> ``("training.train_steps", 100)`` (YAML-typed)."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(value)
