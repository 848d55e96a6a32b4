"""A seq2seq step signature's inputs and the caches carried from step to step: one step
bound to a reserved interpreter (:class:`CarriedStep`), and a step with its length buckets
(:class:`BucketedStep`, ``decode_N``). ``steps.py``'s drivers build on these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_transformer_edge.runtime.signatures import (
    CACHE_ENTRIES,
    CROSS_KEYS,
    CROSS_VALUES,
    LAYER,
    SELF_KEYS,
    SELF_VALUES,
    SPLIT_CACHE,
    bucket_name,
    buckets,
    layer_name,
    position,
)

if TYPE_CHECKING:
    from keras_transformer_edge.runtime.steps import Runner

# The source-length axis of each encode output: [rows, L, 2, H, source, D] and [rows, source].
SOURCE_AXES = {"cross_attention_cache": 4, "source_mask": 1}
# The length axes of a split-cache step's inputs (a per-layer name as its template).
STEP_LENGTH_AXES = {
    "source_mask": ("source", 1),
    **{
        template: (dim, dims.index(dim))
        for template, (_, dims) in SPLIT_CACHE.items()
        for dim in ("source", "target")
        if dim in dims
    },
}


def zero_padded(value: np.ndarray, axis: int, length: int) -> np.ndarray:
    """``value`` at the start of a zero array of ``length`` positions along ``axis``, cut to
    them if longer (a contiguous copy). np.pad does the same with ten times the overhead,
    which counts at a first token's 1 ms."""
    out = np.zeros(value.shape[:axis] + (length,) + value.shape[axis + 1 :], value.dtype)
    kept = min(length, value.shape[axis])
    out[(slice(None),) * axis + (slice(0, kept),)] = value[
        (slice(None),) * axis + (slice(0, kept),)
    ]
    return out


def resized_step_input(name: str, value: np.ndarray, lengths: dict[str, int]) -> np.ndarray:
    """A split-cache step input (``name`` as the signature names it) zero-padded or cut along
    its source or target axis to ``lengths[that axis's size]``: the same step at another
    length bucket (the cut positions must be padding or not yet written)."""
    template = name if name in STEP_LENGTH_AXES else f"{name.rpartition('_')[0]}_{LAYER}"
    if template not in STEP_LENGTH_AXES:
        return value
    dim, axis = STEP_LENGTH_AXES[template]
    if value.shape[axis] == lengths[dim]:
        return value
    return zero_padded(value, axis, lengths[dim])


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


def source_inputs(runner: Runner, signature: str, encoded: dict) -> dict:
    """A seq2seq step's source inputs for ``encoded`` (``encode``'s outputs), each as
    ``(encode's array for it, its source axis)``, before padding to the step's length:
    ``source_mask``; per layer the cross-attention keys ``[rows, H, S, D]`` and values
    ``[rows, H, D, S]`` (an older step: the packed ``cross_attention_cache``)."""
    parts = {"source_mask": (encoded["source_mask"], SOURCE_AXES["source_mask"])}
    cross = encoded["cross_attention_cache"]  # [rows, L, 2, H, S or a bucket's length, D]
    if not split_cache(runner, signature):
        parts["cross_attention_cache"] = (cross, SOURCE_AXES["cross_attention_cache"])
        return parts
    for layer in range(_layers(runner, signature)):
        parts[layer_name(CROSS_KEYS, layer)] = (cross[:, layer, 0], 2)
        parts[layer_name(CROSS_VALUES, layer)] = (cross[:, layer, 1].swapaxes(-1, -2), 3)
    return parts


def step_inputs(runner: Runner, signature: str, encoded: dict) -> tuple[dict, dict]:
    """``(fixed, carried)`` inputs of a seq2seq step signature for ``encoded`` (``encode``'s
    outputs, one row per signature row): what stays the same every step (the source), and the
    cache the steps carry, zero at first (read-only zeros: :class:`CarriedStep` writes them
    into a bound interpreter's own inputs, or copies them where it keeps the cache itself)."""
    source = runner.input_spec(signature, "source_mask")[0][1]
    fixed = {
        name: zero_padded(value, axis, source)  # padded to S as they are copied
        for name, (value, axis) in source_inputs(runner, signature, encoded).items()
    }
    return fixed, zero_caches(runner, signature)


def zero_caches(runner: Runner, signature: str) -> dict:
    """The caches a seq2seq step carries, zero (read-only, allocating nothing)."""
    if not split_cache(runner, signature):
        return {"cache": _zeros(runner.input_spec(signature, "cache")[0])}
    names = [
        layer_name(template, layer)
        for layer in range(_layers(runner, signature))
        for template in (SELF_KEYS, SELF_VALUES)
    ]
    return {name: _zeros(runner.input_spec(signature, name)[0]) for name in names}


def write_padded(target: np.ndarray, value: np.ndarray, axis: int) -> None:
    """``target[...] = zero_padded(value, axis, target.shape[axis])`` without the copy."""
    kept = min(target.shape[axis], value.shape[axis])
    head = (slice(None),) * axis
    target[head + (slice(0, kept),)] = value[head + (slice(0, kept),)]
    target[head + (slice(kept, None),)] = 0


def _zeros(shape) -> np.ndarray:
    """Read-only float32 zeros of ``shape`` that allocate nothing (a first token is about 1 ms,
    and a dozen fresh cache arrays were a tenth of it)."""
    return np.broadcast_to(np.float32(0), shape)


class CarriedStep:
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
        self._row_ids = np.arange(runner.input_spec(signature, "token")[0][0])
        # Format 4: per layer, the keys and values a step's new entries are written into.
        self._targets = (
            []
            if "cache" in carried
            else [
                (self.state[layer_name(SELF_KEYS, n)], self.state[layer_name(SELF_VALUES, n)])
                for n in range(len(carried) // 2)
            ]
        )

    def __call__(self, token: np.ndarray, index: int | np.ndarray) -> np.ndarray:
        """Logits ``[rows, V]`` (a copy) after writing ``token`` ``[rows, 1]`` at ``index``
        (an int; or ``[rows]`` int32, a position per row, for a step that takes them)."""
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
            # Row r's entries go to index[r]: [rows, H, D] picked by (row, index[row]).
            rows = self._row_ids if np.ndim(index) else slice(None)
            for layer, (keys, values) in enumerate(self._targets):
                keys[rows, :, index] = entries[:, layer, 0]
                values[rows, :, :, index] = entries[:, layer, 1]
        else:
            np.copyto(self.state["cache"], outputs["cache"])
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``rows[i]``."""
        for array in self.state.values():
            array[...] = array[rows]

    def write_sources(self, row: int, sources: dict) -> None:
        """Row ``row`` reads ``sources`` (one row's :func:`source_inputs`) from now on."""
        for name, (value, axis) in sources.items():
            target = self.bound.inputs[name] if self.bound is not None else self.fixed[name]
            write_padded(target[row], value[0], axis - 1)

    def load_row(self, row: int, sources: dict) -> None:
        """Row ``row`` reads ``sources`` from now on, its cache emptied: another sentence in
        that row (continuous batching)."""
        self.write_sources(row, sources)
        for array in self.state.values():
            array[row] = 0


class BucketedStep:
    """A step signature and its length buckets (``decode_N``, format 5): each step runs the
    shortest that holds the source's tokens and the position written, the caches moved to
    the next longer one (zero-padded, the padding masked out as the full step's is) when a
    translation reaches its length. A step's attention then reads N source and N cache
    positions, not the full lengths; at one row, a few percent of a step, at eight rows the
    larger part (XNNPACK repacks each attention's cache operand on every call).

    ``tokens``: the longest source's token count. ``bucketed=False``: the signature alone.
    """

    def __init__(
        self,
        runner: Runner,
        signature: str,
        encoded: dict,
        tokens: int,
        bucketed: bool = True,
        bind: bool = True,
    ) -> None:
        self.runner, self.encoded, self.bind = runner, encoded, bind
        lengths = buckets(runner.signatures, signature) if bucketed else []
        # (last position it can write + 1, signature), shortest first; None: the full step.
        self.ladder = [(n, bucket_name(signature, n)) for n in lengths if n >= tokens]
        self.ladder.append((None, signature))
        self.limit, name = self.ladder[0]
        self.step = CarriedStep(runner, name, *step_inputs(runner, name, encoded), bind)

    @property
    def state(self) -> dict[str, np.ndarray]:
        return self.step.state

    def __call__(self, token: np.ndarray, index: int) -> np.ndarray:
        if self.limit is not None and index >= self.limit:
            self._move(index)
        return self.step(token, index)

    def _move(self, index: int) -> None:
        self.limit, name = next((n, s) for n, s in self.ladder if n is None or n > index)
        fixed, _ = step_inputs(self.runner, name, self.encoded)
        length = cache_length(self.runner, name)
        carried = {
            key: resized_step_input(key, value, {"target": length})
            for key, value in self.step.state.items()
        }
        self.step = CarriedStep(self.runner, name, fixed, carried, self.bind)

    def reorder(self, rows: np.ndarray) -> None:
        self.step.reorder(rows)
