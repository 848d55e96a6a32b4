"""The one door to private TensorFlow, TFLite, Keras and tensorflow-model-optimization API on
the conversion side of ``keras_transformer_edge``; each use with its reason.

``tests/test_private_api.py`` fails loudly when an upgrade moves any of it. The device
runtime's own door is ``runtime/litert_private.py``; the core's is
``keras_transformer.private_api`` (whose :func:`nested_layers` this module uses too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_transformer.private_api import nested_layers

__all__ = [  # and, loaded with tfmot when asked for, PruneLowMagnitude and ClusterWeights
    "debugger_samples",
    "nested_layers",
    "op_details",
    "per_tensor_dense_weights",
    "set_debugger_samples",
    "tf_variable",
    "wrapper_weight_quantizers",
]


def tf_variable(variable) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable on the TensorFlow backend.

    tf-keras and tfmot need the ``tf.Variable`` itself (to track it and fake-quantize it);
    Keras 3 keeps it in ``KerasVariable._value`` with no public accessor.
    """
    return variable._value


def op_details(interpreter) -> list[dict[str, Any]]:
    """Every op of a TFLite interpreter: ``{"op_name", "inputs", "outputs", ...}``.

    ``Interpreter._get_ops_details`` is the only way to list a model's ops in Python
    (ai-edge-litert 2.3 has no public op listing; tf.lite's Analyzer prints text).
    """
    return interpreter._get_ops_details()


def per_tensor_dense_weights(converter) -> None:
    """Dense weights quantized per tensor, not per channel (dynamic-range int8).

    Per tensor, the tied output projection shares the int8 bytes of the embedding table it is
    tied to; per channel, the file stores the table twice (0.255x instead of 0.308x the fp32
    size on the en-fr model). The converter has no public switch for it.
    """
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True


def debugger_samples(debugger) -> Callable:
    """The dataset generator a ``QuantizationDebugger`` runs (``_data_gen``)."""
    return debugger._data_gen


def set_debugger_samples(debugger, make: Callable[[Any], Callable]) -> None:
    """Give a ``QuantizationDebugger`` the generator ``make(its quantized interpreter)``.

    The debugger feeds inputs positionally in its own interpreter's input order, which it only
    knows once it has made that interpreter (``_quant_interpreter``); multi-input signatures
    need the samples ordered by it.
    """
    debugger._data_gen = make(debugger._quant_interpreter)


def wrapper_weight_quantizers(wrapper) -> list:
    """``(weight, quantizer, quantizer variables)`` of a tfmot ``QuantizeWrapperV2``
    (``_weight_vars``): baking a QAT model's fake-quantized weights needs them, and tfmot
    keeps them private."""
    return wrapper._weight_vars


def _tfmot_wrappers() -> tuple[type, type]:
    """tfmot's pruning and clustering wrapper classes, to tell a pruned or clustered model.

    tfmot exports ``prune_low_magnitude``/``cluster_weights`` functions but not the classes
    they wrap layers in; ``isinstance`` needs the classes from tfmot's internal modules.
    """
    from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import (
        ClusterWeights,
    )
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,
    )

    return PruneLowMagnitude, ClusterWeights


def __getattr__(name: str):  # the tfmot classes load with tfmot, only when asked for
    if name in ("PruneLowMagnitude", "ClusterWeights"):
        return dict(zip(("PruneLowMagnitude", "ClusterWeights"), _tfmot_wrappers()))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
