"""The task class for a bundle's kind, and a bundle opened as its task."""

from __future__ import annotations

from pathlib import Path

from keras_transformer_edge.runtime.bundle import load_bundle
from keras_transformer_edge.runtime.classifier import Classifier, Tagger
from keras_transformer_edge.runtime.generator import Generator
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.task import Task
from keras_transformer_edge.runtime.translator import Translator

TASKS: dict[str, type[Task]] = {
    "seq2seq": Translator,
    "language_model": Generator,
    "classifier": Classifier,
    "tagger": Tagger,
}


def open_bundle(
    path: str | Path,
    num_threads: int | None = None,
    xnnpack: bool = True,
    record_timings: bool = False,
    max_interpreters: int | None = None,
) -> Task:
    """The bundle in ``path`` as its task (``Translator``, ``Generator``, ...), verified."""
    bundle = load_bundle(path)
    model = LiteModel(bundle.model_path, num_threads, xnnpack, record_timings, max_interpreters)
    return TASKS[bundle.kind](bundle, model)
