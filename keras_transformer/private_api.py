"""The one door to private Keras API in ``keras_transformer``; each use with its reason.

``tests/test_private_api.py`` fails loudly when a Keras upgrade moves any of it.
"""

from __future__ import annotations

from collections.abc import Iterator


def keras_mask(x):
    """The Keras mask attached to a tensor (``Embedding(mask_zero=True)`` and friends).

    Keras 3 keeps it behind ``keras.src.backend.common.masking.get_keras_mask`` (a tensor
    attribute on TensorFlow, a side table elsewhere); there is no public accessor.
    """
    from keras.src.backend.common.masking import get_keras_mask

    return get_keras_mask(x)


def nested_layers(model) -> Iterator:
    """Every layer inside ``model`` (itself included), as Keras walks them.

    ``Layer._flatten_layers`` is the walk Keras itself uses for weights and serialization;
    the public ``Model.layers`` lists only the top level, and our models nest stacks of
    layers inside layers.
    """
    return iter(model._flatten_layers(include_self=True, recursive=True))


# ArgumentError sets this attribute so that Keras does not wrap it in a multi-line report of
# every call argument (keras/src/utils/traceback_utils.py checks it on the exception).
CALL_INFO_INJECTED = "_keras_call_info_injected"
