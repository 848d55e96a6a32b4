"""A finished training run's own data, for converting it: calibration and held-out batches.

Both come from the run's pipeline (the same tokenizer, truncation and special tokens as in
training): calibration batches from the shuffled train split, the parity batch from the
validation split (the test split when there is none) in file order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from keras_transformer_edge import parity
from keras_transformer_edge.convert import ConversionError
from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_pipelines.config import Recipe
from keras_transformer_pipelines.runs import FinishedRun, load_finished_run

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
    finished: FinishedRun | None = None  # the pipeline's view of the run (its data)
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
    batch_rows: int = 1,
) -> LoadedRun:
    """Load a run (``which``: "model" or "best") with the signatures its bundle exports.

    ``beam_size``: rows of the ``decode_beam`` signature (translation; default: the
    recipe's); ``prefill_length``: tokens of the LM's ``prefill`` (default: 32 or less);
    ``batch_rows > 1``: a ``decode_batch`` signature of that many rows (translation).
    """
    from keras_transformer_edge.bundle import sentencepiece_model
    from keras_transformer_edge.convert import (
        classifier_endpoints,
        decode_length_buckets,
        language_model_endpoints,
        length_buckets,
        seq2seq_endpoints,
    )

    run_dir = Path(run_dir)
    tokenizer_file = sentencepiece_model(run_dir / "tokenizer")  # fail before loading
    finished = load_finished_run(run_dir, which)
    recipe, model = finished.recipe, finished.model
    kind = RUN_KINDS[recipe.task]
    run = dict(
        recipe=recipe,
        model=model,
        tokenizer=finished.tokenizer,
        tokenizer_file=tokenizer_file,
        finished=finished,
    )
    if kind == "seq2seq":
        if model.encoder_vocabulary_size != model.decoder_vocabulary_size:
            raise ConversionError(
                "source and target vocabularies differ; bundles share one tokenizer"
            )
        beam_size = beam_size or recipe.decoding.beam_size
        return LoadedRun(
            **run,
            kind=kind,
            endpoints=seq2seq_endpoints(
                model,
                beam_size=beam_size,
                encode_lengths=length_buckets(model.encoder_sequence_length),
                batch_rows=batch_rows,
                decode_lengths=decode_length_buckets(
                    model.encoder_sequence_length, model.decoder_sequence_length
                ),
            ),
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
            endpoints=language_model_endpoints(
                model, prefill_length, prefill_lengths=length_buckets(prefill_length)
            ),
            lengths={"context": model.sequence_length, "prefill": prefill_length},
            vocabulary_size=model.vocabulary_size,
            decoding={"sampler": recipe.decoding.sampler, "top_k": recipe.decoding.top_k},
        )
    return LoadedRun(
        **run,
        kind=kind,
        endpoints=classifier_endpoints(model),
        lengths={"tokens": model.sequence_length},
        vocabulary_size=model.vocabulary_size,
        labels=finished.labels,
    )


def first_batch(run: LoadedRun, split: str, count: int, shuffle: bool):
    """One batch of ``count`` examples of ``split`` as the run's pipeline makes them."""
    dataset = run.finished.batches(split, count, shuffle=shuffle, seed=SEED)
    return next(dataset.take(1).as_numpy_iterator())


def parity_report(run: LoadedRun, flatbuffer: bytes, count: int) -> dict:
    """The ungated parity report of ``flatbuffer`` on ``count`` held-out examples."""
    split = run.finished.held_out_split()
    batch = first_batch(run, split, count, shuffle=False)
    if run.kind == "seq2seq":
        pieces = SentencePieceBPE.load(run.tokenizer_file)  # the device's own detokenizer
        special = {"pad": pieces.pad_id, "start": pieces.start_id, "end": pieces.end_id}
        kept = [[int(t) for t in row if t not in special.values()] for row in batch[1]]
        references = [pieces.decode(ids) for ids in kept]
        report = parity.seq2seq_parity(
            run.model, flatbuffer, batch, pieces.decode, references, special=special
        )
    elif run.kind == "language_model":
        report = parity.language_model_parity(run.model, flatbuffer, batch)
    else:
        signature = "classify" if run.kind == "classifier" else "tag"
        report = parity.classifier_parity(run.model, flatbuffer, batch, signature)
    examples = len(np.asarray(batch[1]))
    return {**report, "split": split, "examples": examples}
