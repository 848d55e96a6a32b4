"""The step signatures driven on the host: one definition of "encode, then decode token by token
with a carried cache", for every caller.

A *runner* is anything with the two methods of :class:`Runner`: the runtime's ``LiteModel``, and
(in ``keras_transformer_edge.runners``) the Keras endpoints, the tf-keras QAT wrapper and an
ONNX session. On a runner:

- :class:`Seq2SeqSteps` encodes one source (through the shortest ``encode_N`` length bucket that
  holds it, :func:`encode_source`), then ``feed(tokens, index)`` runs ``decode`` (or
  ``decode_beam`` for all beams at once; each through its shortest ``decode_N`` bucket that
  holds the source and the position, ``step_caches.BucketedStep``) and carries the cache;
  ``reorder(rows)`` follows the surviving beams. ``feed``/``reorder`` is the contract of
  ``search.py``'s greedy and beam search.
- :class:`BatchSteps` feeds several sentences at once through ``decode_batch``.
- :class:`LanguageModelSteps` runs ``prefill`` (or its shortest ``prefill_N``) on a prompt
  (longer prompts go on through ``decode``), then ``feed`` one token at a time.
- :func:`teacher_forced_logits` feeds given tokens and returns every step's logits;
  :class:`Recording` keeps every signature's inputs as it passes them on (calibration samples).

The device's translation and generation, the parity gate, calibration, QAT conversion and ONNX
checks all drive models through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from keras_transformer_edge.runtime.signatures import bucket_name, buckets, position
from keras_transformer_edge.runtime.step_caches import (
    SOURCE_AXES,
    BucketedStep,
    zero_padded,
)


class Runner(Protocol):
    """What the step drivers need of a model (``signatures``: its signature names as keys)."""

    signatures: dict

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]: ...


class Recording:
    """A runner that keeps each signature's inputs (``samples[signature]``) as it runs them.

    The inputs are copied: a step driver updates its cache arrays in place."""

    def __init__(self, runner: Runner, samples: dict[str, list] | None = None) -> None:
        self.runner = runner
        self.samples: dict[str, list[dict[str, np.ndarray]]] = {} if samples is None else samples

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.samples.setdefault(signature, []).append(
            {name: np.array(value) for name, value in inputs.items()}
        )
        return self.runner.run(signature, **inputs)

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self.runner.input_spec(signature, name)

    @property
    def signatures(self) -> dict:
        return self.runner.signatures


def shortest_bucket(runner: Runner, signature: str, length: int) -> str:
    """The shortest ``{signature}_{N}`` with ``N >= length``, else ``signature`` itself."""
    fitting = [n for n in buckets(runner.signatures, signature) if n >= length]
    return bucket_name(signature, fitting[0]) if fitting else signature


def source_tokens(ids: np.ndarray) -> int:
    """Positions up to the last non-padding id of a ``[1, L]`` row (at least 1)."""
    nonzero = np.flatnonzero(ids[0])
    return int(nonzero[-1]) + 1 if nonzero.size else 1


def encode_source(
    runner: Runner, source_ids: np.ndarray, bucketed: bool = True, padded: bool = True
) -> dict:
    """``encode`` of one padded source ``[1, S]``, through the shortest length bucket that
    holds its tokens (``encode_N``: an N-position encoder), its outputs zero-padded back to
    ``S`` positions. The padding is masked out (``source_mask`` False) exactly as the full
    encode's padded positions are, so every decode step is the same; only the encoder's cost
    follows the sentence's length (a 10-token sentence runs 16 positions, not 64).
    ``padded=False``: the bucket's outputs as they are (``step_caches.step_inputs`` pads them as it
    copies them into a step's inputs, saving a copy of the cross-attention cache)."""
    name = shortest_bucket(runner, "encode", source_tokens(source_ids)) if bucketed else "encode"
    if name == "encode":
        return runner.run("encode", source_ids=source_ids)
    length = runner.input_spec(name, "source_ids")[0][1]
    outputs = runner.run(name, source_ids=np.ascontiguousarray(source_ids[:, :length]))
    if not padded:
        return outputs
    full = runner.input_spec("encode", "source_ids")[0][1]
    return {key: zero_padded(value, SOURCE_AXES[key], full) for key, value in outputs.items()}


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
        bucketed: encode and decode through the shortest length buckets that hold the
            source (:func:`encode_source`, ``step_caches.BucketedStep``).
    """

    def __init__(
        self, runner: Runner, source_ids: np.ndarray, rows: int = 1, bucketed: bool = True
    ) -> None:
        self.runner, self.rows = runner, rows
        encoded = encode_source(runner, source_ids, bucketed, padded=False)
        tokens = source_tokens(source_ids)
        beam_rows = _beam_rows(runner) if rows > 1 else None
        if rows == 1 or beam_rows == rows:
            signature = "decode" if rows == 1 else "decode_beam"
            if rows > 1:  # every beam reads the same source
                encoded = {name: np.repeat(value, rows, axis=0) for name, value in encoded.items()}
            self.steps = [BucketedStep(runner, signature, encoded, tokens, bucketed)]
        else:  # no signature of this many rows: one decode per row, each with its own cache
            self.steps = [
                BucketedStep(runner, "decode", encoded, tokens, bucketed, bind=False)
                for _ in range(rows)
            ]

    def feed(self, tokens: np.ndarray, index: int) -> np.ndarray:
        """Logits ``[rows, V]`` after writing ``tokens`` ``[rows]`` at position ``index``."""
        tokens = np.asarray(tokens, np.int32)
        if len(self.steps) == 1:
            return self.steps[0](tokens.reshape(self.rows, 1), index)
        return np.concatenate(
            [
                step(tokens[row : row + 1].reshape(1, 1), index)
                for row, step in enumerate(self.steps)
            ]
        )

    def reorder(self, rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``rows[i]``."""
        if len(self.steps) == 1:
            self.steps[0].reorder(rows)
            return
        for name in self.steps[0].state:
            copies = [step.state[name].copy() for step in self.steps]
            for step, row in zip(self.steps, rows, strict=True):
                np.copyto(step.state[name], copies[row])


class BatchSteps:
    """``feed`` for several sentences at once through ``decode_batch`` (batch translation).

    Each source is encoded on its own (:func:`encode_source`) and the encodings stacked; a
    batch with fewer sentences than the signature's rows fills the rest with copies of its last
    sentence, whose logits are dropped. Rows never mix: row ``i``'s logits are those of
    sentence ``i`` decoded alone.

    Args:
        runner: a model with ``encode`` and ``decode_batch``.
        sources: ``[n, source length]`` int32, padded, ``n`` at most the signature's rows.
        bucketed: encode and decode through the shortest length buckets that hold the
            longest source (``step_caches.BucketedStep``).
    """

    def __init__(self, runner: Runner, sources: np.ndarray, bucketed: bool = True) -> None:
        self.runner, self.count = runner, len(sources)
        self.rows = runner.input_spec("decode_batch", "token")[0][0]
        if not 1 <= self.count <= self.rows:
            raise ValueError(f"BatchSteps: {self.count} sources for {self.rows} rows")
        encoded = [encode_source(runner, source[None], bucketed) for source in sources]
        encoded += [encoded[-1]] * (self.rows - self.count)
        encoded = {name: np.concatenate([one[name] for one in encoded]) for name in encoded[0]}
        tokens = max(source_tokens(source[None]) for source in sources)
        self.step = BucketedStep(runner, "decode_batch", encoded, tokens, bucketed)

    def feed(self, tokens: np.ndarray, index: int) -> np.ndarray:
        """Logits ``[n, V]`` after writing ``tokens`` ``[n]`` at position ``index``."""
        padded = np.empty(self.rows, np.int32)
        padded[: self.count] = tokens
        padded[self.count :] = tokens[-1]
        return self.step(padded.reshape(self.rows, 1), index)[: self.count]


class LanguageModelSteps:
    """One sequence's cache over ``prefill`` and ``decode`` (one row)."""

    def __init__(self, runner: Runner, bucketed: bool = True) -> None:
        self.runner, self.bucketed = runner, bucketed
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
        # The shortest prefill_N that holds the prompt: N positions of work, not prefill's.
        name = shortest_bucket(self.runner, "prefill", head.size) if self.bucketed else "prefill"
        padded = np.zeros(self.runner.input_spec(name, "tokens")[0], np.int32)
        padded[0, : head.size] = head
        outputs = self.runner.run(name, tokens=padded, cache=self.cache)
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
