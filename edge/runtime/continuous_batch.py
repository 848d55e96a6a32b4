"""Continuous batching: ``decode_batch`` rows that each hold their own sentence at their own
position, a finished row taking the next sentence at once.

A batch stepped in lockstep runs until its longest translation ends: on the en-fr test split,
8 rows were busy in 69% of their steps. With a position per row (``decode_batch``'s ``index``
is ``[rows]`` from format 6, ``signatures.py``) a row that writes its end token is loaded with
the next sentence (its encoding written into that row's inputs, its cache emptied) and starts
at position 0 on the next step, while the other rows go on.

:class:`ContinuousBatchSteps` is the model side, as two callables for
``search.greedy_stream``: ``admit(row, source)`` loads a sentence (``None``: the row idles),
``feed(tokens [rows], positions [rows])`` steps every row. Each step runs the shortest length
bucket (``decode_batch_N``) that holds every busy row's source and position; the caches move
to another bucket, longer or shorter, when the busy rows need it
(``step_caches.resized_step_input``: the positions cut are padding or not yet written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_transformer_edge.runtime.signatures import bucket_name, buckets, row_positions
from keras_transformer_edge.runtime.step_caches import (
    CarriedStep,
    cache_length,
    resized_step_input,
    source_inputs,
    zero_caches,
)
from keras_transformer_edge.runtime.steps import encode_source, source_tokens

if TYPE_CHECKING:
    from keras_transformer_edge.runtime.steps import Runner

SIGNATURE = "decode_batch"


def takes_row_positions(runner: Runner) -> bool:
    """Whether ``runner`` has a ``decode_batch`` with a position per row (format 6)."""
    if SIGNATURE not in runner.signatures:
        return False
    rows = runner.input_spec(SIGNATURE, "token")[0][0]
    return row_positions(runner.input_spec(SIGNATURE, "index")[0], rows)


class ContinuousBatchSteps:
    """``decode_batch``'s rows, each loaded with a sentence of its own; see the module.

    Args:
        runner: a model with ``encode`` and a ``decode_batch`` that takes a position per row
            (:func:`takes_row_positions`).
        bucketed: encode and step through the shortest length buckets that hold the rows.
    """

    def __init__(self, runner: Runner, bucketed: bool = True) -> None:
        if not takes_row_positions(runner):
            raise ValueError(f"ContinuousBatchSteps needs a {SIGNATURE} with a position per row")
        self.runner, self.bucketed = runner, bucketed
        self.rows = runner.input_spec(SIGNATURE, "token")[0][0]
        lengths = buckets(runner.signatures, SIGNATURE) if bucketed else []
        # (positions it holds, signature), shortest first; None: the full step.
        self.ladder = [(n, bucket_name(SIGNATURE, n)) for n in lengths] + [(None, SIGNATURE)]
        self.encoded: list[dict | None] = [None] * self.rows  # each row's encode outputs
        self.lengths = np.zeros(self.rows, np.int64)  # each busy row's source tokens; 0: idle
        self.loaded = np.zeros(self.rows, bool)  # row's inputs hold its sentence
        self.step: CarriedStep | None = None
        self.signature: str | None = None

    def admit(self, row: int, source_ids: np.ndarray | None) -> None:
        """Row ``row`` takes ``source_ids`` (``[1, source]`` int32, padded) from position 0
        on the next step; ``None``: it idles (its logits mean nothing)."""
        if source_ids is None:
            self.lengths[row] = 0
            return
        self.encoded[row] = encode_source(self.runner, source_ids, self.bucketed, padded=False)
        self.lengths[row] = source_tokens(source_ids)
        self.loaded[row] = False

    def feed(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Logits ``[rows, V]`` after row ``r`` writes ``tokens[r]`` at ``positions[r]``."""
        positions = np.asarray(positions, np.int32)
        busy = self.lengths > 0
        if not busy.any():
            raise ValueError("ContinuousBatchSteps.feed: no row holds a sentence")
        need = int(np.maximum(self.lengths, positions + 1)[busy].max())
        signature = next(name for n, name in self.ladder if n is None or n >= need)
        if signature != self.signature:
            self._move(signature)
        for row in np.flatnonzero(~self.loaded & busy):
            self._load(int(row))
        return self.step(np.asarray(tokens, np.int32).reshape(self.rows, 1), positions)

    def _load(self, row: int) -> None:
        """Row ``row``'s inputs from its sentence's encoding, its cache emptied."""
        sources = source_inputs(self.runner, self.signature, self.encoded[row])
        self.step.load_row(row, sources)
        self.loaded[row] = True

    def _move(self, signature: str) -> None:
        """Step through ``signature`` from now on: each busy row's source written at that
        step's length, the caches padded or cut to its target length (an idle row reads
        zeros, and its logits mean nothing)."""
        busy = np.flatnonzero(self.lengths > 0)
        names = source_inputs(self.runner, signature, self.encoded[busy[0]])
        # Writable: rows are loaded into them (unbound, the step passes these arrays).
        fixed = {name: np.zeros(*self.runner.input_spec(signature, name)) for name in names}
        if self.step is None:
            carried = zero_caches(self.runner, signature)
        else:
            length = {"target": cache_length(self.runner, signature)}
            carried = {
                name: resized_step_input(name, value, length)
                for name, value in self.step.state.items()
            }
        self.step = CarriedStep(self.runner, signature, fixed, carried)
        self.signature = signature
        for row in busy:
            sources = source_inputs(self.runner, signature, self.encoded[row])
            if self.loaded[row]:  # the same sentence: its source at the new length
                self.step.write_sources(int(row), sources)
            else:
                self.step.load_row(int(row), sources)
                self.loaded[row] = True
