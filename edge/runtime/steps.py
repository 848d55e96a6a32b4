"""The step signatures driven on the host: one definition of "encode, then decode token by token
with a carried cache", for every caller.

A *runner* is anything with the two methods of :class:`Runner`: the runtime's ``LiteModel``, and
(in ``keras_transformer_edge.runners``) the Keras endpoints, the tf-keras QAT wrapper and an
ONNX session. On a runner:

- :class:`Seq2SeqSteps` encodes one source, then ``feed(tokens, index)`` runs ``decode`` (or
  ``decode_beam`` for all beams at once) and carries the cache; ``reorder(rows)`` follows the
  surviving beams. ``feed``/``reorder`` is the contract of ``search.py``'s greedy and beam search.
- :class:`LanguageModelSteps` runs ``prefill`` on a prompt (longer prompts go on through
  ``decode``), then ``feed`` one token at a time.
- :func:`teacher_forced_logits` feeds given tokens and returns every step's logits;
  :class:`Recording` keeps every signature's inputs as it passes them on (calibration samples).

The device's translation and generation, the parity gate, calibration, QAT conversion and ONNX
checks all drive models through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from keras_transformer_edge.runtime.signatures import position


class Runner(Protocol):
    """What the step drivers need of a model."""

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]: ...


class Recording:
    """A runner that keeps each signature's inputs (``samples[signature]``) as it runs them."""

    def __init__(self, runner: Runner, samples: dict[str, list] | None = None) -> None:
        self.runner = runner
        self.samples: dict[str, list[dict[str, np.ndarray]]] = {} if samples is None else samples

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.samples.setdefault(signature, []).append(inputs)
        return self.runner.run(signature, **inputs)

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self.runner.input_spec(signature, name)


def _beam_rows(runner: Runner) -> int | None:
    try:
        return runner.input_spec("decode_beam", "token")[0][0]
    except KeyError:
        return None


class Seq2SeqSteps:
    """``feed``/``reorder`` over ``rows`` decoder rows for one encoded source.

    One ``decode`` call per step (one row), or one ``decode_beam`` call when that signature
    has exactly ``rows`` rows; any other number of rows runs ``decode`` once per row, each
    with its own cache.

    Args:
        runner: a model with ``encode`` and ``decode`` (see :class:`Runner`).
        source_ids: ``[1, source length]`` int32, already padded.
        rows: decoder rows (beams).
    """

    def __init__(self, runner: Runner, source_ids: np.ndarray, rows: int = 1) -> None:
        self.runner, self.rows = runner, rows
        encoded = runner.run("encode", source_ids=source_ids)
        beam_rows = _beam_rows(runner) if rows > 1 else None
        self.signature = "decode" if rows == 1 else "decode_beam" if beam_rows == rows else None
        cache_shape, _ = runner.input_spec("decode", "cache")
        self.cache = np.zeros((rows, *cache_shape[1:]), np.float32)
        self.position_shape, _ = runner.input_spec("decode", "index")  # [1]; [] in format 1
        self.encoded = encoded  # one row
        if self.signature == "decode_beam":  # every beam reads the same source
            self.encoded = {name: np.repeat(value, rows, axis=0) for name, value in encoded.items()}

    def feed(self, tokens: np.ndarray, index: int) -> np.ndarray:
        """Logits ``[rows, V]`` after writing ``tokens`` ``[rows]`` at position ``index``."""
        at = position(index, self.position_shape)
        if self.signature is None:
            return np.concatenate([self._row(tokens, at, row) for row in range(self.rows)])
        outputs = self.runner.run(
            self.signature,
            token=np.asarray(tokens, np.int32).reshape(self.rows, 1),
            cache=self.cache,
            index=at,
            **self.encoded,
        )
        self.cache = outputs["cache"]
        return outputs["logits"][:, 0]

    def _row(self, tokens: np.ndarray, at: np.ndarray, row: int) -> np.ndarray:
        outputs = self.runner.run(
            "decode",
            token=np.asarray(tokens[row : row + 1], np.int32).reshape(1, 1),
            cache=self.cache[row : row + 1],
            index=at,
            **self.encoded,
        )
        self.cache[row] = outputs["cache"][0]
        return outputs["logits"][:, 0]

    def reorder(self, rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``rows[i]``."""
        self.cache = self.cache[rows]


class LanguageModelSteps:
    """One sequence's cache over ``prefill`` and ``decode`` (one row)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        tokens_shape, _ = runner.input_spec("prefill", "tokens")
        self.prefill_length = tokens_shape[1]
        cache_shape, _ = runner.input_spec("decode", "cache")
        self.cache = np.zeros(cache_shape, np.float32)
        self.position_shape, _ = runner.input_spec("decode", "index")

    def prefill(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits ``[n, V]`` for each of the ``n`` prompt tokens, written from position 0.

        ``prefill`` takes a fixed number of tokens: a shorter prompt is padded (the causal
        mask keeps the padding out of the prompt's logits, and each padded cache slot is
        written again before any query sees it), a longer one goes on through ``decode``.
        """
        tokens = np.asarray(tokens, np.int32).reshape(-1)
        head = tokens[: self.prefill_length]
        padded = np.zeros((1, self.prefill_length), np.int32)
        padded[0, : head.size] = head
        outputs = self.runner.run("prefill", tokens=padded, cache=self.cache)
        self.cache = outputs["cache"]
        logits = [outputs["logits"][0, : head.size]]
        logits += [self.feed(tokens[i : i + 1], i) for i in range(head.size, tokens.size)]
        return np.concatenate(logits)

    def feed(self, tokens: np.ndarray, index: int) -> np.ndarray:
        """Logits ``[1, V]`` after writing ``tokens`` ``[1]`` at position ``index``."""
        outputs = self.runner.run(
            "decode",
            token=np.asarray(tokens, np.int32).reshape(1, 1),
            cache=self.cache,
            index=position(index, self.position_shape),
        )
        self.cache = outputs["cache"]
        return outputs["logits"][:, 0]


def teacher_forced_logits(steps: Seq2SeqSteps, tokens: Sequence[int]) -> np.ndarray:
    """Logits ``[T, V]``: ``tokens[i]`` fed at position ``i`` (one row)."""
    return np.stack(
        [steps.feed(np.array([token], np.int32), index)[0] for index, token in enumerate(tokens)]
    )
