"""Magnitude pruning (unstructured or 2:4) and weight clustering of a bridged model, and
``strip`` back to Keras 3 (for QAT models too)."""

from __future__ import annotations

import keras
import tensorflow_model_optimization as tfmot
import tf_keras

from keras_transformer.layers.validation import ArgumentError
from keras_transformer_edge import private_api
from keras_transformer_edge.optimize.checks import _check_int, _check_tf_keras_model
from keras_transformer_edge.optimize.qat import _quantize_wrapper
from keras_transformer_edge.optimize.quantize_configs import quantize_scope
from keras_transformer_edge.private_api import ClusterWeights, PruneLowMagnitude
from keras_transformer_edge.tfkeras_bridge import bridge_layer, check_model, to_tf_keras

STRUCTURES = ("unstructured", "2:4")


def prune(
    model: keras.Model,
    target_sparsity: float = 0.5,
    structure: str = "unstructured",
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int = 1,
) -> tf_keras.Model:
    """A tf-keras model that prunes ``model``'s matmul kernels by magnitude while it trains.

    Args:
        model: a Keras 3 ``keras_transformer`` model. It shares its variables with the
            result: training the result prunes ``model`` in place.
        target_sparsity: fraction of zeros in each kernel, in (0, 1); must be 0.5 for
            ``"2:4"``.
        structure: ``"unstructured"``, or ``"2:4"`` (2 of every 4 consecutive weights along
            each kernel's input axis are zero; tfmot's ``sparsity_m_by_n=(2, 4)``).
        begin_step: training step at which pruning starts.
        end_step: with ``"unstructured"``, sparsity ramps from 0 at ``begin_step`` to the
            target at ``end_step`` (polynomial decay); ``None`` prunes to the target at once.
        frequency: steps between mask updates.

    Train with ``fit(..., callbacks=pruning_callbacks())``, then :func:`strip`.
    """
    check_model("prune", model)
    if structure not in STRUCTURES:
        raise ArgumentError(f"prune: `structure` must be one of {STRUCTURES}, got {structure!r}")
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)):
        raise ArgumentError(f"prune: `target_sparsity` must be a number, got {target_sparsity!r}")
    if not 0.0 < target_sparsity < 1.0:
        raise ArgumentError(f"prune: `target_sparsity` must be in (0, 1), got {target_sparsity}")
    if structure == "2:4" and target_sparsity != 0.5:
        raise ArgumentError(f"prune: 2:4 sparsity is 0.5 exactly, got {target_sparsity}")
    _check_int("prune", "begin_step", begin_step, 0)
    _check_int("prune", "frequency", frequency, 1)
    if end_step is not None:
        _check_int("prune", "end_step", end_step, begin_step + 1)
    sparsity = tfmot.sparsity.keras
    if end_step is None or structure == "2:4":
        schedule = sparsity.ConstantSparsity(target_sparsity, begin_step, frequency=frequency)
    else:
        schedule = sparsity.PolynomialDecay(
            0.0, target_sparsity, begin_step, end_step, frequency=frequency
        )
    options = {"pruning_schedule": schedule}
    if structure == "2:4":
        options["sparsity_m_by_n"] = (2, 4)
    return sparsity.prune_low_magnitude(to_tf_keras(model), **options)


def pruning_callbacks() -> list[tf_keras.callbacks.Callback]:
    """The callbacks ``fit`` needs while pruning (tfmot's ``UpdatePruningStep``)."""
    return [tfmot.sparsity.keras.UpdatePruningStep()]


# -- clustering ---------------------------------------------------------------------------
def cluster(
    model: keras.Model, number_of_clusters: int = 16, initialization: str = "kmeans++"
) -> tf_keras.Model:
    """A tf-keras model whose matmul kernels each take ``number_of_clusters`` values
    (trainable centroids), tfmot's weight clustering. Train with ``fit``, then :func:`strip`.

    Args:
        model: a Keras 3 ``keras_transformer`` model (its variables are shared).
        number_of_clusters: distinct values per kernel, >= 2.
        initialization: centroid initialization, ``"kmeans++"``, ``"linear"``,
            ``"density"`` or ``"random"``.
    """
    check_model("cluster", model)
    _check_int("cluster", "number_of_clusters", number_of_clusters, 2)
    inits = tfmot.clustering.keras.CentroidInitialization
    choices = {
        "kmeans++": inits.KMEANS_PLUS_PLUS,
        "linear": inits.LINEAR,
        "density": inits.DENSITY_BASED,
        "random": inits.RANDOM,
    }
    if initialization not in choices:
        raise ArgumentError(
            f"cluster: `initialization` must be one of {sorted(choices)}, got {initialization!r}"
        )
    return tfmot.clustering.keras.cluster_weights(
        to_tf_keras(model),
        number_of_clusters=number_of_clusters,
        cluster_centroids_init=choices[initialization],
    )


def strip(
    optimized: tf_keras.Model,
    into: keras.Model | None = None,
    bake_quantized_weights: bool = False,
) -> keras.Model:
    """The Keras 3 model inside ``optimized`` with tfmot's wrappers removed.

    Pruning is stripped with tfmot's ``strip_pruning`` (the kernels are already zero where
    masked), clustering with ``strip_clustering`` (the kernels take their clustered values).
    For a quantization-aware model the float weights it trained come back; with
    ``bake_quantized_weights`` every quantized weight is replaced by its fake-quantized value
    (what the int8 model stores, in float).

    Args:
        into: copy the weights into this Keras 3 model (same architecture) and return it.
    """
    _check_tf_keras_model("strip", optimized)
    if into is not None:
        check_model("strip", into)
    layers = optimized.layers
    if any(isinstance(layer, PruneLowMagnitude) for layer in layers):
        optimized = tfmot.sparsity.keras.strip_pruning(optimized)
    elif any(isinstance(layer, ClusterWeights) for layer in layers):
        with quantize_scope():
            optimized = tfmot.clustering.keras.strip_clustering(optimized)
    elif bake_quantized_weights:
        wrapper = _quantize_wrapper(optimized)
        for weight, quantizer, variables in private_api.wrapper_weight_quantizers(wrapper):
            weight.assign(quantizer(weight, False, variables))
    result = bridge_layer(optimized).model
    if into is not None and into is not result:
        into.ensure_built()
        into.set_weights(result.get_weights())
        return into
    return result
