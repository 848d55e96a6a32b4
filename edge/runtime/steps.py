"""The step signatures driven on the host: one definition of "encode, then decode token by token
with a carried cache", for every caller.

A *runner* is anything with the two methods of :class:`Runner`: the runtime's ``LiteModel``, and
(in ``keras_transformer_edge.runners``) the Keras endpoints, the tf-keras QAT wrapper and an
ONNX session. On a runner:

- :class:`Seq2SeqSteps` encodes one source (through the shortest ``encode_N`` length bucket that
  holds it, :func:`encode_source`), then ``feed(tokens, index)`` runs ``decode`` (or
  ``decode_beam`` for all beams at once) and carries the cache; ``reorder(rows)`` follows the
  surviving beams. ``feed``/``reorder`` is the contract of ``search.py``'s greedy and beam search.
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

from keras_transformer_edge.runtime.signatures import (
    CACHE_ENTRIES,
    SELF_KEYS,
    SELF_VALUES,
    SPLIT_CACHE,
    bucket_name,
    buckets,
    layer_name,
    position,
)

# The source-length axis of each encode output: [rows, L, 2, H, source, D] and [rows, source].
SOURCE_AXES = {"cross_attention_cache": 4, "source_mask": 1}


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


def _tokens_in(ids: np.ndarray) -> int:
    """Positions up to the last non-padding id of a ``[1, L]`` row."""
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
    ``padded=False``: the bucket's outputs as they are (:func:`step_inputs` pads them as it
    copies them into a step's inputs, saving a copy of the cross-attention cache)."""
    name = shortest_bucket(runner, "encode", _tokens_in(source_ids)) if bucketed else "encode"
    if name == "encode":
        return runner.run("encode", source_ids=source_ids)
    length = runner.input_spec(name, "source_ids")[0][1]
    outputs = runner.run(name, source_ids=np.ascontiguousarray(source_ids[:, :length]))
    if not padded:
        return outputs
    full = runner.input_spec("encode", "source_ids")[0][1]
    return {key: _zero_padded(value, SOURCE_AXES[key], full) for key, value in outputs.items()}


def _zero_padded(value: np.ndarray, axis: int, length: int) -> np.ndarray:
    """``value`` at the start of a zero array of ``length`` positions along ``axis`` (a
    contiguous copy). np.pad does the same with ten times the overhead, which counts at a
    first token's 1 ms."""
    out = np.zeros(value.shape[:axis] + (length,) + value.shape[axis + 1 :], value.dtype)
    out[(slice(None),) * axis + (slice(0, value.shape[axis]),)] = value
    return out


def _has_input(runner: Runner, signature: str, name: str) -> bool:
    try:
        runner.input_spec(signature, name)
    except KeyError:
        return False
    return True


def split_cache(runner: Runner, signature: str = "decode") -> bool:
    """Whether ``signature`` reads per-layer caches and returns new entries (format 4,
    ``signatures.py``), not one packed ``cache`` carried in and out."""
    return not _has_input(runner, signature, "cache")


def cache_length(runner: Runner, signature: str = "decode") -> int:
    """The positions a decode step's cache holds (``target``, or a language model's
    ``context``)."""
    if split_cache(runner, signature):
        return runner.input_spec(signature, layer_name(SELF_KEYS, 0))[0][2]
    return runner.input_spec(signature, "cache")[0][-2]


def _layers(runner: Runner, signature: str) -> int:
    layers = 0
    while _has_input(runner, signature, layer_name(SELF_KEYS, layers)):
        layers += 1
    return layers


def step_inputs(runner: Runner, signature: str, encoded: dict) -> tuple[dict, dict]:
    """``(fixed, carried)`` inputs of a seq2seq step signature for ``encoded`` (``encode``'s
    outputs, one row per signature row): what stays the same every step (the source), and the
    cache the steps carry, zero at first (read-only zeros: :class:`_CarriedStep` writes them
    into a bound interpreter's own inputs, or copies them where it keeps the cache itself)."""
    source = runner.input_spec(signature, "source_mask")[0][1]
    fixed = {"source_mask": _zero_padded(encoded["source_mask"], 1, source)}
    cross = encoded["cross_attention_cache"]  # [rows, L, 2, H, S or a bucket's length, D]
    if not split_cache(runner, signature):
        fixed["cross_attention_cache"] = _zero_padded(
            cross, SOURCE_AXES["cross_attention_cache"], source
        )
        return fixed, {"cache": _zeros(runner.input_spec(signature, "cache")[0])}
    carried = {}
    for layer in range(_layers(runner, signature)):
        keys, values, cross_keys, cross_values = (
            layer_name(template, layer) for template in SPLIT_CACHE
        )
        # [rows, H, S, D] and [rows, H, D, S]: padded to S as they are copied.
        fixed[cross_keys] = _zero_padded(cross[:, layer, 0], 2, source)
        fixed[cross_values] = _zero_padded(cross[:, layer, 1].swapaxes(-1, -2), 3, source)
        for name in (keys, values):
            carried[name] = _zeros(runner.input_spec(signature, name)[0])
    return fixed, carried


def _zeros(shape) -> np.ndarray:
    """Read-only float32 zeros of ``shape`` that allocate nothing (a first token is about 1 ms,
    and a dozen fresh cache arrays were a tenth of it)."""
    return np.broadcast_to(np.float32(0), shape)


class _CarriedStep:
    """One step signature fed the same fixed inputs every step, its cache carried: bound to a
    reserved interpreter (``runtime/reserved.py``: fixed inputs written once, the cache kept
    in the interpreter's own input tensors) when the runner is one and the runtime allows;
    else every input passed on each call.

    A format-4 step returns the new cache entries and they are written at ``index`` in place;
    an older step returns its whole packed cache, copied over the carried one.
    """

    def __init__(
        self, runner: Runner, signature: str, fixed: dict, carried: dict, bind: bool = True
    ) -> None:
        self.runner, self.signature, self.fixed = runner, signature, fixed
        self.position_shape, _ = runner.input_spec(signature, "index")  # [1]; [] in format 1
        binder = getattr(runner, "bind", None) if bind else None
        self.bound = binder(signature, {**fixed, **carried}) if binder is not None else None
        # The carried arrays: the interpreter's own input tensors when bound, else copies.
        self.state = (
            {name: self.bound.inputs[name] for name in carried}
            if self.bound
            else {name: np.array(value) for name, value in carried.items()}
        )
        if self.bound is not None:
            self._token, self._index = self.bound.inputs["token"], self.bound.inputs["index"]
        # Format 4: per layer, the keys and values a step's new entries are written into.
        self._targets = (
            []
            if "cache" in carried
            else [
                (self.state[layer_name(SELF_KEYS, n)], self.state[layer_name(SELF_VALUES, n)])
                for n in range(len(carried) // 2)
            ]
        )

    def __call__(self, token: np.ndarray, index: int) -> np.ndarray:
        """Logits ``[rows, V]`` (a copy) after writing ``token`` ``[rows, 1]`` at ``index``."""
        if self.bound is not None:
            # Written straight into the interpreter's inputs: a decode step is about 0.2 ms,
            # and the checked step() spent 5% of it on checking its own driver's arrays.
            if token.shape != self._token.shape:
                raise ValueError(f"{self.signature}: token {token.shape}, not {self._token.shape}")
            self._token[...] = token
            self._index[...] = index
            outputs = self.bound.invoke()
        else:
            at = position(index, self.position_shape)
            outputs = self.runner.run(
                self.signature, token=token, index=at, **self.fixed, **self.state
            )
        logits = outputs["logits"][:, 0].copy()
        if self._targets:
            entries = outputs[CACHE_ENTRIES]  # [rows, L, 2, H, D]
            for layer, (keys, values) in enumerate(self._targets):
                keys[:, :, index] = entries[:, layer, 0]
                values[:, :, :, index] = entries[:, layer, 1]
        else:
            np.copyto(self.state["cache"], outputs["cache"])
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``rows[i]``."""
        for array in self.state.values():
            array[...] = array[rows]


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
        bucketed: encode through the shortest length bucket (:func:`encode_source`).
    """

    def __init__(
        self, runner: Runner, source_ids: np.ndarray, rows: int = 1, bucketed: bool = True
    ) -> None:
        self.runner, self.rows = runner, rows
        encoded = encode_source(runner, source_ids, bucketed, padded=False)
        beam_rows = _beam_rows(runner) if rows > 1 else None
        if rows == 1 or beam_rows == rows:
            signature = "decode" if rows == 1 else "decode_beam"
            if rows > 1:  # every beam reads the same source
                encoded = {name: np.repeat(value, rows, axis=0) for name, value in encoded.items()}
            self.steps = [_CarriedStep(runner, signature, *step_inputs(runner, signature, encoded))]
        else:  # no signature of this many rows: one decode per row, each with its own cache
            self.steps = [
                _CarriedStep(runner, "decode", *step_inputs(runner, "decode", encoded), bind=False)
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
    """

    def __init__(self, runner: Runner, sources: np.ndarray) -> None:
        self.runner, self.count = runner, len(sources)
        self.rows = runner.input_spec("decode_batch", "token")[0][0]
        if not 1 <= self.count <= self.rows:
            raise ValueError(f"BatchSteps: {self.count} sources for {self.rows} rows")
        encoded = [encode_source(runner, source[None]) for source in sources]
        encoded += [encoded[-1]] * (self.rows - self.count)
        encoded = {name: np.concatenate([one[name] for one in encoded]) for name in encoded[0]}
        self.step = _CarriedStep(
            runner, "decode_batch", *step_inputs(runner, "decode_batch", encoded)
        )

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
