"""Absolute positions of a step's tokens, from the position of its first token.

The contract
------------
``start_index`` (where a call's first token sits) is a Python int, a scalar tensor, or a
``[B]`` tensor: one start per row, so that rows of one batch can sit at different positions
(continuous batching: a finished row takes a new sentence from position 0 while the others
go on). Every layer that reads positions (the position embeddings, rotary embedding and the
masks of a cached step) takes all three, and its output gains a leading ``[B]`` axis only in
the per-row case.
"""

from __future__ import annotations

from keras import ops


def is_per_row(start_index) -> bool:
    """Whether ``start_index`` holds one start per row (a rank-1 tensor)."""
    return len(getattr(start_index, "shape", ())) == 1


def step_positions(length, start_index=0):
    """int32 positions of ``length`` steps: ``[T]`` from a scalar start, ``[B, T]`` from a
    ``[B]`` one."""
    steps = ops.arange(length, dtype="int32")
    start = ops.cast(start_index, "int32")
    if is_per_row(start_index):
        return ops.expand_dims(start, -1) + steps
    return steps + start
