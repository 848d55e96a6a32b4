"""Training throughput in real (non-padding) tokens: length bucketing vs fixed-length padding.

The same model (the translation recipe's, from recipes/en-fr.yaml) trains with ``fit`` on the
offline English->French gettext corpus twice: once on the recipe's bucketed pipeline (a token
budget per batch, padding only to the bucket's bound) and once on batches padded to the maximum
length with the same number of token slots per batch (``batch = max_tokens / max_length``).
Each run trains ``--warmup-steps`` steps first (tracing), then ``--steps`` timed steps; the real
tokens of the timed batches are counted from the same seeded pipeline.

    python benchmarks/input_pipeline.py [--steps 60] [--warmup-steps 30]

Last line: JSON with bucketed_nonpad_tokens_per_s, padded_nonpad_tokens_per_s, ratio,
padding_fraction_bucketed, padding_fraction_padded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports TensorFlow: its start-up notices filtered

import keras  # noqa: E402

from keras_transformer_pipelines import translation_recipe  # noqa: E402
from keras_transformer_pipelines.config import load_recipe  # noqa: E402
from keras_transformer_pipelines.translation_data import translation_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def token_counts(dataset, skip: int, take: int) -> tuple[int, int]:
    """(real tokens, token slots) of source + target over batches ``skip .. skip + take``."""
    real = slots = 0
    for inputs, labels in dataset.skip(skip).take(take):
        for ids in (inputs["encoder_token_ids"].numpy(), labels.numpy()):
            real += int((ids != 0).sum())
            slots += ids.size
    return real, slots


def measure(recipe, tokenizer, pairs, steps: int, warmup_steps: int, **batching) -> dict:
    data = recipe.data

    def dataset():
        return translation_dataset(
            pairs,
            tokenizer,
            data.max_source_length,
            data.max_target_length,
            shuffle=True,
            seed=0,
            **batching,
        ).repeat()

    keras.utils.set_random_seed(0)
    model = translation_recipe.build_model(recipe, tokenizer.vocabulary_size())
    translation_recipe.compile_model(model, recipe)
    model.fit(dataset(), epochs=1, steps_per_epoch=warmup_steps, verbose=0)
    timer = EpochTimer()
    model.fit(
        dataset().skip(warmup_steps), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer]
    )
    real, slots = token_counts(dataset(), warmup_steps, steps)
    # The pipeline alone, warm (cached): how many batches per second it can hand to fit.
    iterator = iter(dataset())
    for _ in range(warmup_steps):
        next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    pipeline_seconds = time.perf_counter() - started
    return {
        "input_batches_per_s": steps / pipeline_seconds,
        "train_steps_per_s": steps / timer.seconds,
        "nonpad_tokens_per_s": real / timer.seconds,
        "padding_fraction": 1.0 - real / slots,
        "seconds": timer.seconds,
        "real_tokens": real,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "input-pipeline"))
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "en-fr.yaml"))
    args = parser.parse_args(argv)

    recipe = load_recipe(args.recipe, {"output_dir": args.work_dir})
    pairs = translation_recipe.read_pairs(translation_recipe.split_paths(recipe)["train"], False)
    tokenizer = translation_recipe.tokenizer_for(recipe, pairs)
    max_tokens = recipe.data.max_tokens
    longest = max(recipe.data.max_source_length, recipe.data.max_target_length)
    bucketed = measure(
        recipe, tokenizer, pairs, args.steps, args.warmup_steps, max_tokens=max_tokens
    )
    padded = measure(
        recipe, tokenizer, pairs, args.steps, args.warmup_steps, batch_size=max_tokens // longest
    )
    print(json.dumps({"bucketed": bucketed, "padded": padded}))
    print(
        json.dumps(
            {
                "bucketed_nonpad_tokens_per_s": round(bucketed["nonpad_tokens_per_s"], 1),
                "padded_nonpad_tokens_per_s": round(padded["nonpad_tokens_per_s"], 1),
                "ratio": round(bucketed["nonpad_tokens_per_s"] / padded["nonpad_tokens_per_s"], 2),
                "padding_fraction_bucketed": round(bucketed["padding_fraction"], 3),
                "padding_fraction_padded": round(padded["padding_fraction"], 3),
                "tokens_per_batch": max_tokens,
                # Input is not the bottleneck when it outpaces training many times over.
                "input_over_train_speed": round(
                    bucketed["input_batches_per_s"] / bucketed["train_steps_per_s"], 1
                ),
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
