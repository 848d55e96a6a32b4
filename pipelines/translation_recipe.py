"""The translation recipe: data -> tokenizer -> Seq2SeqTransformer trained with ``fit`` ->
BLEU/chrF on the test split. Driven by a :class:`~keras_transformer_pipelines.config.Recipe`.

What a run leaves in ``output_dir``::

    data/            the corpus, when built from gettext catalogs
    tokenizer/       the vocabulary, as plain files (tokenizers.py)
    backup/          Keras BackupAndRestore state while training (resume after a kill)
    best.keras       the model with the best validation loss
    model.keras      the final model
    logs/            TensorBoard; history.csv the per-checkpoint metrics
    recipe.json      the recipe as run
    evaluation.json  and hypotheses.txt, after ``evaluate``
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_transformer.models import Seq2SeqTransformer
from keras_transformer_pipelines import gettext_corpus
from keras_transformer_pipelines.config import Recipe
from keras_transformer_pipelines.decoding import translate_ids
from keras_transformer_pipelines.distribution import (
    distribute_dataset,
    make_strategy,
    prepare_for_fit,
)
from keras_transformer_pipelines.distribution import output_dir as worker_output_dir
from keras_transformer_pipelines.objectives import (
    InverseSquareRootSchedule,
    MaskedAccuracy,
    MaskedSparseCrossentropy,
    cosine_with_warmup,
)
from keras_transformer_pipelines.readers import ReadReport, read_parallel_tsv
from keras_transformer_pipelines.tokenizers import (
    END_ID,
    PAD_ID,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from keras_transformer_pipelines.translation_data import translation_dataset

logger = logging.getLogger(__name__)


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` after ``seconds`` of training (checked after every step)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.started > self.seconds:
            self.model.stop_training = True


class BackupWithRandomState(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, plus the random-number state of dropout.

    ``save_weights`` keeps weights and optimizer state but not the layers' seed generators,
    so a resumed run would draw other dropout masks than the run it replaces. Saving their
    states beside the backup at each checkpoint makes the resumed run the same run.
    """

    def _random_state(self) -> list:
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def _state_path(self) -> Path:
        return Path(self.backup_dir) / "random_state.npz"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._state_path().is_file():
            saved = np.load(self._state_path())
            for index, variable in enumerate(self._random_state()):
                variable.assign(saved[str(index)])

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq == "epoch":
            states = {str(i): np.asarray(v) for i, v in enumerate(self._random_state())}
            np.savez(self._state_path(), **states)


def split_paths(recipe: Recipe) -> dict[str, Path]:
    """The train/valid/test TSV files, building the gettext corpus first if asked."""
    data = recipe.data
    if data.corpus is not None:
        directory = Path(recipe.output_dir) / "data"
        if not (directory / "manifest.json").is_file():
            language = data.corpus.split(":", 1)[1]
            catalogs = gettext_corpus.find_catalogs(language)
            if not catalogs:
                raise FileNotFoundError(f"no gettext catalogs for '{language}' on this machine")
            splits = gettext_corpus.build_corpus(catalogs)
            gettext_corpus.write_corpus(splits, directory, catalogs, language)
        return {name: directory / f"{name}.tsv" for name in ("train", "valid", "test")}
    paths = {"train": data.train, "valid": data.valid, "test": data.test}
    return {name: Path(path) for name, path in paths.items() if path is not None}


def read_pairs(path: Path, strict: bool) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    report = ReadReport(str(path))
    pairs = list(read_parallel_tsv(path, strict=strict, report=report))
    if report.skipped:
        logger.warning("%s: skipped %d malformed line(s)", path, len(report.skipped))
    return pairs


def tokenizer_for(recipe: Recipe, train_pairs: list[tuple[str, str]]):
    """The run's tokenizer: loaded from ``output_dir/tokenizer``, or trained and saved there.

    One joint vocabulary for both languages: gettext's messages share names, numbers and
    technical words across the two sides.
    """
    directory = Path(recipe.output_dir) / "tokenizer"
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    texts = [text for pair in train_pairs for text in pair]
    config = recipe.tokenizer
    tokenizer = train_tokenizer(texts, config.vocabulary_size, config.kind, config.lowercase)
    save_tokenizer(tokenizer, directory)
    return tokenizer


def build_model(recipe: Recipe, vocabulary_size: int) -> Seq2SeqTransformer:
    model_config = recipe.model
    model = Seq2SeqTransformer(
        vocabulary_size,
        vocabulary_size,
        recipe.data.max_source_length,
        recipe.data.max_target_length,
        num_encoder_layers=model_config.num_encoder_layers,
        num_decoder_layers=model_config.num_decoder_layers,
        tie_output_embeddings=model_config.tie_output_embeddings,
        hidden_dim=model_config.hidden_dim,
        num_heads=model_config.num_heads,
        intermediate_dim=model_config.intermediate_dim,
        dropout=model_config.dropout,
        activation=model_config.activation,
        normalize_first=model_config.normalize_first,
        position_encoding=model_config.position_encoding,
        scale_embeddings=model_config.scale_embeddings,
    )
    model.ensure_built()
    return model


def build_optimizer(recipe: Recipe) -> keras.optimizers.Optimizer:
    training = recipe.training
    if training.schedule == "inverse_sqrt":
        # Scaled so that the peak, at warmup_steps, is training.learning_rate.
        scale = training.learning_rate * (recipe.model.hidden_dim * training.warmup_steps) ** 0.5
        schedule = InverseSquareRootSchedule(recipe.model.hidden_dim, training.warmup_steps, scale)
    else:
        schedule = cosine_with_warmup(
            training.learning_rate, training.warmup_steps, training.train_steps, 0.05
        )
    return keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=training.weight_decay,
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
        clipnorm=training.clipnorm,
    )


def compile_model(model: keras.Model, recipe: Recipe) -> None:
    model.compile(
        optimizer=build_optimizer(recipe),
        loss=MaskedSparseCrossentropy(recipe.training.label_smoothing, PAD_ID),
        metrics=[MaskedAccuracy(PAD_ID)],
    )


def _restored_checkpoints(backup_dir: Path) -> int:
    """How many checkpoint periods a killed run finished (0 for a fresh run).

    BackupAndRestore restores weights, optimizer state and the epoch inside ``fit``; the input
    pipeline must also resume where it was, so it skips the batches already trained on.
    """
    metadata = backup_dir / "training_metadata.json"
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def train(recipe: Recipe, callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Train the recipe's model; resumes from ``output_dir/backup`` after an interruption.

    ``callbacks`` run after the recipe's own (backup first, so a checkpoint is written before
    any of them sees the end of a period). Returns a summary: steps, seconds, final metrics.
    """
    extra_callbacks = list(callbacks or [])
    training = recipe.training
    output = Path(recipe.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # First: a multi-worker strategy must set up collectives before TensorFlow starts.
    strategy = make_strategy(training.distribution)
    keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    if training.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    # Non-chief workers write their copies where they do not clash with the chief's files.
    workdir = Path(worker_output_dir(str(output), strategy))

    paths = split_paths(recipe)
    train_pairs = read_pairs(paths["train"], recipe.data.strict)
    valid_pairs = read_pairs(paths["valid"], recipe.data.strict) if "valid" in paths else []
    tokenizer = tokenizer_for(recipe, train_pairs)
    (output / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")

    with strategy.scope():
        model = build_model(recipe, tokenizer.vocabulary_size())
        compile_model(model, recipe)
    prepare_for_fit(model)

    data = recipe.data
    batching = {"max_tokens": data.max_tokens, "batch_size": data.batch_size}
    done = _restored_checkpoints(workdir / "backup")

    def train_input(input_context=None):
        dataset = translation_dataset(
            train_pairs,
            tokenizer,
            data.max_source_length,
            data.max_target_length,
            shuffle=True,
            seed=training.seed,
            input_context=input_context,
            **batching,
        )
        return dataset.repeat().skip(done * training.steps_per_checkpoint)

    train_data = train_input()
    if training.distribution == "multi_worker":
        train_data = distribute_dataset(strategy, train_input)
    valid_data = None
    if valid_pairs:
        valid_data = translation_dataset(
            valid_pairs, tokenizer, data.max_source_length, data.max_target_length, **batching
        )

    callbacks = [
        BackupWithRandomState(workdir / "backup", save_freq="epoch"),
        keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(workdir / "logs"), update_freq="epoch"),
    ]
    monitor = "val_loss" if valid_data is not None else "loss"
    callbacks.append(
        keras.callbacks.ModelCheckpoint(str(workdir / "best.keras"), monitor, save_best_only=True)
    )
    if training.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor, patience=training.early_stopping_patience)
        )
    if training.time_budget_s:
        callbacks.append(TimeBudget(training.time_budget_s))
    callbacks += extra_callbacks

    started = time.perf_counter()
    history = model.fit(
        train_data,
        epochs=training.train_steps // training.steps_per_checkpoint,
        steps_per_epoch=training.steps_per_checkpoint,
        validation_data=valid_data,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=training.verbose,
    )
    seconds = time.perf_counter() - started
    model.save(workdir / "model.keras")
    summary = {
        "steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": round(seconds, 1),
        "parameters": model.count_params(),
        "vocabulary_size": tokenizer.vocabulary_size(),
        "train_pairs": len(train_pairs),
    }
    for key, values in history.history.items():
        summary[f"final_{key}"] = round(float(values[-1]), 4)
    (workdir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_trained(output_dir: str | Path, which: str = "model") -> tuple[Seq2SeqTransformer, object]:
    """``(model, tokenizer)`` of a finished run (``which``: "model" or "best")."""
    output = Path(output_dir)
    path = output / f"{which}.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run `train` first")
    model = keras.saving.load_model(path, compile=False)
    return model, load_tokenizer(output / "tokenizer")


class Translator:
    """Batched text -> text translation with a trained model (greedy or beam search).

    The decoding graph is traced once per batch shape: sources are padded to the model's
    source length and batches to ``batch_size``.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        tokenizer,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        max_length: int | None = None,
        batch_size: int = 64,
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.source_length = model.encoder_sequence_length
        max_length = max_length or model.decoder_sequence_length

        @tf.function(reduce_retracing=True)
        def decode(source_ids):
            return translate_ids(
                model,
                source_ids,
                max_length=max_length,
                num_beams=beam_size,
                length_penalty=length_penalty,
            )

        self._decode = decode

    def ids(self, texts: list[str]) -> np.ndarray:
        """Source ids ``[N, S]`` (truncated, 0-padded)."""
        ids = np.zeros((len(texts), self.source_length), np.int32)
        for row, tokens in enumerate(self.tokenizer(list(texts))):
            tokens = np.asarray(tokens, np.int32)[: self.source_length]
            ids[row, : len(tokens)] = tokens
        return ids

    def __call__(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        source = self.ids(texts)
        outputs = []
        for begin in range(0, len(texts), self.batch_size):
            chunk = source[begin : begin + self.batch_size]
            filled = np.pad(chunk, [(0, self.batch_size - len(chunk)), (0, 0)])
            tokens = self._decode(tf.constant(filled, tf.int32)).numpy()[: len(chunk)]
            outputs += [self._text(row) for row in tokens]
        return outputs

    def _text(self, row: np.ndarray) -> str:
        ids = [int(token) for token in row if token not in (PAD_ID, END_ID)]
        if not ids:
            return ""
        text = self.tokenizer.detokenize([ids])[0]
        return text if isinstance(text, str) else text.numpy().decode("utf-8")


def translator_for(recipe: Recipe, which: str = "best") -> Translator:
    """A :class:`Translator` over a finished run's model, with the recipe's decoding settings."""
    model, tokenizer = load_trained(recipe.output_dir, which)
    decoding = recipe.decoding
    return Translator(
        model,
        tokenizer,
        decoding.beam_size,
        decoding.length_penalty,
        decoding.max_length,
        decoding.batch_size,
    )


def evaluate(recipe: Recipe, which: str = "best", limit: int | None = None) -> dict:
    """Translate the test split and score it with sacreBLEU (BLEU, chrF)."""
    from keras_transformer_pipelines.metrics import bleu, chrf

    output = Path(recipe.output_dir)
    translator = translator_for(recipe, which)
    pairs = read_pairs(split_paths(recipe)["test"], recipe.data.strict)[:limit]
    started = time.perf_counter()
    hypotheses = translator([source for source, _ in pairs])
    seconds = time.perf_counter() - started
    references = [target for _, target in pairs]
    result = {
        "bleu": round(bleu(hypotheses, references), 2),
        "chrf": round(chrf(hypotheses, references), 2),
        "sentences": len(pairs),
        "decode_seconds": round(seconds, 1),
        "beam_size": recipe.decoding.beam_size,
        "model": which,
    }
    (output / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses), "utf-8")
    (output / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
