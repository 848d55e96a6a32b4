"""Translation with a seq2seq bundle: ``encode`` once, then ``decode`` steps on the host.

The inputs are the Keras side's (``translation_recipe.KerasTranslator``): the source is the text's
ids cut to the source length and 0-padded, with no start token; the decoder starts from the
start token and writes at most the target length; greedy or beam search with a length penalty
(:mod:`~keras_transformer_edge.runtime.search`). A text without tokens translates to ``""``
and the model does not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_transformer_edge.runtime import options
from keras_transformer_edge.runtime.bundle import Bundle
from keras_transformer_edge.runtime.continuous_batch import (
    ContinuousBatchSteps,
    takes_row_positions,
)
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.search import (
    beam_search,
    continue_tokens,
    greedy_rows,
    greedy_stream,
)
from keras_transformer_edge.runtime.steps import BatchSteps, Seq2SeqSteps
from keras_transformer_edge.runtime.task import Task


class Translator(Task):
    """Text in, text out, with a seq2seq bundle.

    Args:
        bundle, model: see :class:`~keras_transformer_edge.runtime.task.Task`; or use
            :meth:`from_bundle`.
        beam_size: 1 for greedy; default: the manifest's ``decoding.beam_size`` (else 1).
        length_penalty: GNMT alpha for beam search; default: the manifest's (else 0).
        max_length: most target tokens; default and at most the model's target length.

    Example:
    >>> translator = Translator.from_bundle("bundles/en-fr", num_threads=2)  # doctest: +SKIP
    >>> translator.translate("Open the file")  # doctest: +SKIP
    'Ouvrir le fichier'
    """

    kind = "seq2seq"

    def __init__(
        self,
        bundle: Bundle,
        model: LiteModel,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__(bundle, model)
        decoding = bundle.manifest["decoding"]  # checked when the bundle was loaded
        self.source_length: int = bundle.max_lengths["source"]
        self.target_length: int = bundle.max_lengths["target"]
        self.beam_size, self.length_penalty, self.max_length = self._options(
            decoding.get("beam_size", 1) if beam_size is None else beam_size,
            decoding.get("length_penalty", 0.0) if length_penalty is None else length_penalty,
            decoding.get("max_length") if max_length is None else max_length,
        )

    def check_options(
        self, beam_size: object = None, length_penalty: object = None, max_length: object = None
    ) -> tuple[int, float, int]:
        """``(beam_size, length_penalty, max_length)`` for a call, ``None`` meaning this
        translator's default; each checked (an ``InputError`` naming the option)."""
        return self._options(
            self.beam_size if beam_size is None else beam_size,
            self.length_penalty if length_penalty is None else length_penalty,
            self.max_length if max_length is None else max_length,
        )

    def _options(self, beam_size: object, length_penalty: object, max_length: object):
        return (
            options.integer("beam_size", beam_size, 1, options.MAX_BEAM_SIZE),
            options.number("length_penalty", length_penalty, 0.0, 10.0),
            options.integer("max_length", max_length, 1, self.target_length, optional=True)
            or self.target_length,
        )

    def source_ids(self, text: str) -> list[int]:
        """The source ids of ``text``: cut to the source length (with a warning)."""
        return self.encode(text, self.source_length, "source tokens")

    def translate(self, text: str, **options: Any) -> str:
        """The translation of ``text``; ``""`` for a text without tokens.

        ``options``: ``beam_size``, ``length_penalty``, ``max_length`` for this call.
        """
        return self.decode(self.translate_ids(self.source_ids(text), **options))

    @property
    def batch_rows(self) -> int:
        """Sentences one batched decode step advances (``decode_batch``'s rows), else 1."""
        if "decode_batch" not in self.model.signatures:
            return 1
        return self.model.input_spec("decode_batch", "token")[0][0]

    def translate_many(self, texts: Sequence[str], **options: Any) -> list[str]:
        """The translations of ``texts``, in order: greedy ones :attr:`batch_rows` sentences at
        a time (each the same as alone; with a format-6 bundle a row that ends takes the next
        sentence at once, ``continuous_batch.py``), beam ones one at a time. ``options`` as
        :meth:`translate`."""
        sources = [self.source_ids(text) for text in texts]
        return [self.decode(ids) for ids in self.translate_ids_many(sources, **options)]

    def translate_ids_many(
        self,
        sources: Sequence[Sequence[int]],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
    ) -> list[list[int]]:
        """:meth:`translate_ids` of every source, batched where the search is greedy."""
        beam_size, alpha, limit = self.check_options(beam_size, length_penalty, max_length)
        checked = [self.check_ids(ids, self.source_length, "source_ids") for ids in sources]
        rows = self.batch_rows
        if beam_size > 1 or rows == 1:
            return [self.translate_ids(ids, beam_size, alpha, limit) for ids in checked]
        # Similar lengths run side by side: a step's length bucket is its longest source's.
        order = sorted(
            (i for i, ids in enumerate(checked) if ids.size), key=lambda i: checked[i].size
        )
        sources = [checked[i] for i in order]
        with self.model.reserved() as model:  # one interpreter for the whole run
            if takes_row_positions(model):
                written = self._continuous(model, sources, rows, limit)
            else:  # format 3 to 5: rows in lockstep, a batch until its longest ends
                written = self._lockstep(model, sources, rows, limit)
        results: list[list[int]] = [[] for _ in checked]
        for i, tokens in zip(order, written, strict=True):
            results[i] = tokens
        return results

    def _padded(self, ids: np.ndarray) -> np.ndarray:
        """``[1, source length]`` int32: ``ids`` then padding."""
        padded = np.zeros((1, self.source_length), np.int32)
        padded[0, : ids.size] = ids
        return padded

    def _continuous(self, model, sources: list[np.ndarray], rows: int, limit: int):
        """Greedy tokens of ``sources``, a finished row taking the next source at once."""
        steps = ContinuousBatchSteps(model)

        def admit(row: int, sentence: int | None) -> None:
            steps.admit(row, None if sentence is None else self._padded(sources[sentence]))

        return greedy_stream(
            steps.feed, admit, len(sources), rows, self.start_id, self.end_id, limit
        )

    def _lockstep(self, model, sources: list[np.ndarray], rows: int, limit: int):
        """Greedy tokens of ``sources`` in batches of ``rows`` stepped together."""
        written: list[list[int]] = []
        for start in range(0, len(sources), rows):
            chunk = np.concatenate([self._padded(ids) for ids in sources[start : start + rows]])
            steps = BatchSteps(model, chunk)
            written += greedy_rows(steps.feed, len(chunk), self.start_id, self.end_id, limit)
        return written

    def translate_ids(
        self,
        source_ids: Sequence[int],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """Target ids after the start token, the end token last if one was written."""
        beam_size, alpha, limit = self.check_options(beam_size, length_penalty, max_length)
        source = self.check_ids(source_ids, self.source_length, "source_ids")
        if not source.size:
            return []
        with self.model.reserved() as model:  # one interpreter for the whole translation
            steps = Seq2SeqSteps(model, self._padded(source), beam_size)
            return self._search(steps, beam_size, alpha, limit)

    def _search(self, steps: Seq2SeqSteps, beam_size: int, alpha: float, limit: int) -> list[int]:
        if beam_size == 1:
            first = steps.feed(np.array([self.start_id], np.int32), 0)[0]
            return continue_tokens(steps.feed, first, 1, limit + 1, self.end_id)
        return beam_search(
            steps.feed,
            steps.reorder,
            beam_size,
            limit,
            self.start_id,
            self.end_id,
            self.pad_id,
            alpha,
        )
