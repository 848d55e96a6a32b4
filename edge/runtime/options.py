"""Checks for the options the runtime takes, wherever they enter: ``from_bundle``, a task's
constructor, each call, and the command line (which passes its values through the same API).

Each check returns the value in its canonical type or raises one :class:`InputError` that names
the option and shows the value. ``bool`` is not accepted where a number is meant, NaN and
infinities are not numbers here, and numpy integers and floats are accepted as Python's.
"""

from __future__ import annotations

import math
import numbers

from keras_transformer_edge.runtime.errors import InputError

MAX_BEAM_SIZE = 64  # beams x vocabulary scores are sorted per step: bounded
MAX_THREADS = 256


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(
    name: str, value: object, low: int, high: int | None = None, optional: bool = False
) -> int | None:
    """An integer in ``[low, high]`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_int(value):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)  # type: ignore[arg-type]
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be an integer {allowed}, got {value}")
    return value


def number(
    name: str,
    value: object,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> float | None:
    """A finite real number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        left = "(" if low_open else "["
        raise InputError(
            f"{name} must be in {left}{low}, {high if high is not None else 'inf'}], got {value}"
        )
    return value


def flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value
