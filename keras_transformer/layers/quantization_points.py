"""Optional fake-quantization points: named places in a layer's math where a tool may attach
a quantizer (quantization-aware training). Without one attached the layers compute exactly
as before; nothing here depends on a backend.

A layer lists its points in ``QUANTIZATION_POINTS``. A tool sets the layer's
``quantization_points`` attribute to a dict ``{point name: callable(tensor) -> tensor}``
(for example tensorflow-model-optimization's fake-quant ops, see
``keras_transformer_edge.optimize``) and sets it back to ``None`` afterwards.

Integer activations also need attention's masked scores bounded (see
:data:`QUANTIZED_MASK_VALUE`) so that an int8 scores tensor keeps a small range: that is a
switch of its own, ``MultiHeadAttention.bounded_masked_scores``, turned on for a whole model
with :func:`bounded_scores` (post-training int8 export) or by a quantization-aware config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from keras_transformer import private_api

# Masked attention scores while quantization points are attached: each row is shifted so
# that its largest unmasked score is 0, clipped to [QUANTIZED_MASK_VALUE, 0], and masked
# keys sit at the bound (not at -1e9, which would leave an int8 scores tensor no resolution).
# e^-8 = 3.4e-4 is below half the int8 softmax step (1/256); the masked keys' weights are
# zeroed after the softmax, and their share of the denominator is that small.
QUANTIZED_MASK_VALUE = -8.0


@contextlib.contextmanager
def bounded_scores(model) -> Iterator:
    """Inside, every attention layer of ``model`` bounds its masked scores to
    ``[QUANTIZED_MASK_VALUE, 0]`` (for an int8 export); outside, as before."""
    layers = [
        layer
        for layer in private_api.nested_layers(model)
        if hasattr(layer, "bounded_masked_scores")
    ]
    saved = [layer.bounded_masked_scores for layer in layers]
    for layer in layers:
        layer.bounded_masked_scores = True
    try:
        yield model
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.bounded_masked_scores = value


def quantization_point(layer, name: str, x):
    """``x`` through the quantizer attached to ``layer`` at point ``name``, if any."""
    points = getattr(layer, "quantization_points", None)
    if not points or name not in points:
        return x
    return points[name](x)


def point_function(layer):
    """``f(name, x)`` for the points of ``layer``, or ``None`` when none is attached."""
    if not getattr(layer, "quantization_points", None):
        return None
    return lambda name, x: quantization_point(layer, name, x)
