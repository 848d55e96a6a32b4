"""Argument checks with one-line errors, and small helpers shared by the layers."""

from __future__ import annotations

import keras

from keras_transformer.errors import InputProblem


class ArgumentError(InputProblem):
    """A bad argument or input, reported in one line that names it and its shape.

    Keras wraps exceptions raised inside ``call()`` in a multi-line report of every call
    argument; it leaves alone exceptions marked as already reported, which this one is
    (``private_api.CALL_INFO_INJECTED``).
    """

    _keras_call_info_injected = True  # private_api.CALL_INFO_INJECTED


def check_rank(owner: str, argument: str, shape, rank: int) -> None:
    """Raise :class:`ArgumentError` naming ``argument`` when ``shape`` is not of ``rank``."""
    if shape is None or len(shape) != rank:
        raise ArgumentError(
            f"{owner}: `{argument}` must have rank {rank}, got shape "
            f"{None if shape is None else tuple(shape)}"
        )


def check_divisible(owner: str, width: int, num_heads: int) -> int:
    """Return ``width // num_heads``, or raise when the heads do not divide the width."""
    if num_heads < 1 or width % num_heads:
        raise ArgumentError(
            f"{owner}: num_heads={num_heads} must divide the model width {width} "
            f"(inputs of width {width})"
        )
    return width // num_heads


def keras_mask_of(x):
    """The Keras mask attached to ``x`` (e.g. by ``Embedding(mask_zero=True)``), or ``None``."""
    if x is None:
        return None
    from keras_transformer import private_api

    return private_api.keras_mask(x)


def clone_initializer(initializer):
    """A fresh copy, so that seeded initializers do not give every weight the same values."""
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
