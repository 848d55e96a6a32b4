"""Keras 3 models inside tf-keras (Keras 2), for tensorflow-model-optimization.

tensorflow-model-optimization (tfmot) wraps tf-keras layers only. :class:`KerasModelLayer`
is a tf-keras layer that holds one of our Keras 3 models and runs it: on the TensorFlow
backend a Keras 3 layer computes with plain ``tf`` tensors, so the model's own ``call``,
``encode`` and ``decode`` are the layer's math, and the tf-keras layer tracks the very
``tf.Variable`` objects behind the Keras 3 variables. There is no second copy of the math
and, until tfmot clones the model, no second copy of the weights: a step of
``tf_keras.Model.fit`` updates the Keras 3 model.

tfmot replaces weights by tensors (a fake-quantized kernel, a clustered kernel) by setting
an attribute of the layer it wraps. Every weight of the Keras 3 model is therefore exposed
as an attribute of the bridge layer named by its path (``encoder__layer_0__self_attention__
query_kernel``). Setting one to a tensor makes the Keras 3 layers that own that weight read
the tensor during the next call; after the call they read the variable again.

Endpoints: ``call`` runs ``model(inputs)``; a ``Seq2SeqTransformer`` also has ``encode`` and
``decode`` (the signatures of :func:`keras_transformer_edge.convert.seq2seq_endpoints`) and a
``TransformerLanguageModel`` ``prefill`` and ``decode``. Pick one with
``layer(inputs, endpoint="decode")``, where ``inputs`` is a dict of the endpoint's arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import keras
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from keras_transformer.layers.validation import ArgumentError
from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge import private_api
from keras_transformer_edge.convert import language_model_endpoints, seq2seq_endpoints

SUPPORTED_MODELS = (
    Seq2SeqTransformer,
    TransformerLanguageModel,
    SequenceClassifier,
    TokenClassifier,
)


@dataclass
class WeightSlot:
    """One weight of the Keras 3 model and the ``(layer, attribute)`` pairs that hold it."""

    name: str
    variable: keras.Variable
    owners: list[tuple[keras.layers.Layer, str]] = field(default_factory=list)

    @property
    def tf_variable(self) -> tf.Variable:
        return private_api.tf_variable(self.variable)

    @property
    def is_kernel(self) -> bool:
        """Matmul kernels (attention, feed-forward and Dense projections), not embeddings,
        biases or normalization scales."""
        return self.name.endswith("kernel") and len(self.variable.shape) == 2


def check_model(function: str, model) -> None:
    """One-line error unless ``model`` is one of our built-able Keras 3 models."""
    if not isinstance(model, SUPPORTED_MODELS):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
        raise ArgumentError(
            f"{function}: `model` must be a keras_transformer model ({names}), "
            f"got {type(model).__name__}"
        )


def _layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    return private_api.nested_layers(model)


def weight_slots(model: keras.Model) -> dict[str, WeightSlot]:
    """Every weight of ``model`` by path (``/`` -> ``__``, model name dropped), in the order
    of ``model.weights``, with the attributes of the Keras 3 layers that hold it."""
    by_id: dict[int, WeightSlot] = {}
    slots: dict[str, WeightSlot] = {}
    prefix = model.name + "/"
    for variable in model.weights:
        path = variable.path[len(prefix) :] if variable.path.startswith(prefix) else variable.path
        name = path.replace("/", "__")
        if name in slots:
            raise ArgumentError(f"two weights of {model.name} share the path {variable.path}")
        slots[name] = by_id[id(variable)] = WeightSlot(name, variable)
    for layer in _layers(model):
        for attribute, value in vars(layer).items():
            if isinstance(value, keras.Variable) and id(value) in by_id:
                by_id[id(value)].owners.append((layer, attribute))
    return slots


def _endpoints(model: keras.Model, prefill_length: int | None):
    if isinstance(model, Seq2SeqTransformer):
        return seq2seq_endpoints(model)
    if isinstance(model, TransformerLanguageModel) and prefill_length:
        return language_model_endpoints(model, prefill_length)
    return {}


class KerasModelLayer(
    tf_keras.layers.Layer,
    tfmot.sparsity.keras.PrunableLayer,
    tfmot.clustering.keras.ClusterableLayer,
):
    """A tf-keras layer that runs a Keras 3 ``keras_transformer`` model on its variables.

    Args:
        model: a ``Seq2SeqTransformer``, ``TransformerLanguageModel``, ``SequenceClassifier``
            or ``TokenClassifier`` (built here if it is not yet).
        prefill_length: for a language model, the prompt length of the ``prefill`` endpoint.

    Call arguments:
        inputs: what the endpoint takes: the model's inputs for ``"call"``, else a dict of
            the endpoint's arguments (``source_ids``; ``token, cache, index,
            cross_attention_cache, source_mask``; ...).
        training: passed to the model (dropout).
        endpoint: ``"call"`` (default), ``"encode"``, ``"decode"`` or ``"prefill"``.
    """

    def __init__(self, model: keras.Model, prefill_length: int | None = None, **kwargs):
        check_model("KerasModelLayer", model)
        kwargs.setdefault("name", model.name)
        super().__init__(**kwargs)
        model.ensure_built()
        slots = weight_slots(model)
        # Kept out of tf-keras's attribute tracking: tf-keras must see the variables, not
        # the Keras 3 objects that hold them.
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_slots", slots)
        object.__setattr__(self, "_endpoint_functions", _endpoints(model, prefill_length))
        # (id(layer), attribute) -> (layer, attribute, value before the first replacement)
        object.__setattr__(self, "_originals", {})
        self.prefill_length = prefill_length
        # Tracked (checkpoints, SavedModel) and listed as this layer's weights.
        self.bridged_variables = [slot.tf_variable for slot in slots.values()]
        self.supports_masking = True
        self.built = True

    # -- the Keras 3 side --------------------------------------------------------------
    @property
    def model(self) -> keras.Model:
        """The Keras 3 model whose variables this layer holds."""
        return self._model

    @property
    def slots(self) -> dict[str, WeightSlot]:
        return self._slots

    @property
    def endpoint_signatures(self) -> dict[str, list[tf.TensorSpec]]:
        """The static input specs of each exportable endpoint (as in ``convert.py``)."""
        return {name: specs for name, (_, specs) in self._endpoint_functions.items()}

    def endpoint_argument_names(self, endpoint: str) -> list[str]:
        function, _ = self._endpoint_functions[endpoint]
        return list(inspect.signature(function).parameters)

    # -- weights as attributes, for tfmot's wrappers ------------------------------------
    def __getattr__(self, name):
        slots = self.__dict__.get("_slots")
        if slots is not None and name in slots:
            layer, attribute = slots[name].owners[0]
            value = getattr(layer, attribute)
            return slots[name].tf_variable if isinstance(value, keras.Variable) else value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        slots = self.__dict__.get("_slots")
        if slots is not None and name in slots:
            self.substitute(name, value)
        else:
            super().__setattr__(name, value)

    def remember(self, layer: keras.layers.Layer, attributes) -> None:
        """Record ``layer``'s ``attributes`` so that :meth:`restore` puts them back."""
        for attribute in attributes:
            key = (id(layer), attribute)
            if key not in self._originals:
                self._originals[key] = (layer, attribute, getattr(layer, attribute))

    def substitute(self, name: str, tensor) -> None:
        """Make the Keras 3 layers read ``tensor`` for weight ``name`` until the end of the
        next call (the variable itself restores the weight at once)."""
        slot = self._slots[name]
        if tensor is slot.tf_variable or tensor is slot.variable:
            tensor = slot.variable
        for layer, attribute in slot.owners:
            self.remember(layer, (attribute,))
            object.__setattr__(layer, attribute, tensor)

    def substituted(self, name: str) -> bool:
        """Whether weight ``name`` currently reads a tensor set by :meth:`substitute`."""
        layer, attribute = self._slots[name].owners[0]
        return getattr(layer, attribute) is not self._slots[name].variable

    def get_weights(self):
        """Values of the weights that are variables now. As in tf-keras, where setting
        ``layer.kernel = tensor`` drops the kernel from the layer's weights, a substituted
        weight is left out (tfmot's ``strip_clustering`` inserts the clustered values)."""
        return [
            slot.variable.numpy()
            for name, slot in self._slots.items()
            if not self.substituted(name)
        ]

    def restore(self) -> None:
        """Every replaced attribute of the Keras 3 layers (weights, quantization points,
        activations) is put back: the Keras 3 model computes in float again."""
        for layer, attribute, value in self._originals.values():
            object.__setattr__(layer, attribute, value)
        self._originals.clear()

    # -- call ---------------------------------------------------------------------------
    def call(self, inputs, training=None, endpoint: str = "call", model_training=None):
        """``model_training`` overrides ``training`` for the Keras 3 model only (dropout):
        a quantization wrapper calibrates its ranges in training mode, without dropout."""
        training = training if model_training is None else model_training
        try:
            if endpoint == "call":
                return self._model(inputs, training=training)
            if endpoint not in self._endpoint_functions:
                raise ArgumentError(
                    f"KerasModelLayer: {type(self._model).__name__} has no endpoint "
                    f"{endpoint!r}; it has {['call', *self._endpoint_functions]}"
                )
            function, _ = self._endpoint_functions[endpoint]
            return function(**inputs)
        finally:
            self.restore()

    def compute_mask(self, inputs, mask=None):
        return None

    # -- tfmot interfaces ---------------------------------------------------------------
    def get_prunable_weights(self) -> list[tf.Variable]:
        """The 2-D matmul kernels (attention, feed-forward, Dense heads)."""
        return [slot.tf_variable for slot in self._slots.values() if slot.is_kernel]

    def get_clusterable_weights(self) -> list[tuple[str, tf.Variable]]:
        return [(slot.name, slot.tf_variable) for slot in self._slots.values() if slot.is_kernel]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self._model),
                "prefill_length": self.prefill_length,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)


def model_inputs(model: keras.Model) -> dict[str, tf_keras.Input] | tf_keras.Input:
    """tf-keras ``Input`` tensors matching what ``model(...)`` takes (lengths left free)."""
    if isinstance(model, Seq2SeqTransformer):
        return {
            name: tf_keras.Input((None,), dtype="int32", name=name)
            for name in ("encoder_token_ids", "decoder_token_ids")
        }
    return tf_keras.Input((None,), dtype="int32", name="token_ids")


def functional(
    model: keras.Model,
    wrap: Callable[[KerasModelLayer], tf_keras.layers.Layer] | None = None,
    prefill_length: int | None = None,
) -> tf_keras.Model:
    """A functional tf-keras model of one :class:`KerasModelLayer` (optionally wrapped)."""
    layer = KerasModelLayer(model, prefill_length=prefill_length)
    inputs = model_inputs(model)
    outputs = (wrap(layer) if wrap else layer)(inputs)
    return tf_keras.Model(inputs, outputs, name=f"{model.name}_tf_keras")


def to_tf_keras(model: keras.Model, prefill_length: int | None = None) -> tf_keras.Model:
    """A functional tf-keras model that runs ``model`` on ``model``'s own variables.

    The result is what tensorflow-model-optimization accepts; training it with ``fit``
    trains ``model``. Its single layer is a :class:`KerasModelLayer`
    (``result.layers[-1]``), which also runs the ``encode``/``decode`` endpoints.

    Example:
    >>> from keras_transformer.models import SequenceClassifier
    >>> model = SequenceClassifier(50, 8, num_classes=2, hidden_dim=16, num_heads=2,
    ...                            intermediate_dim=32, num_layers=1)
    >>> bridged = to_tf_keras(model)
    >>> ids = tf.constant([[5, 6, 7, 0, 0, 0, 0, 0]])
    >>> float(tf.reduce_max(tf.abs(bridged(ids) - model(ids)))) < 1e-6
    True
    """
    check_model("to_tf_keras", model)
    return functional(model, prefill_length=prefill_length)


def bridge_layer(tf_keras_model: tf_keras.Model) -> KerasModelLayer:
    """The :class:`KerasModelLayer` inside a bridged model, through any tfmot wrapper."""
    for layer in tf_keras_model.layers:
        while isinstance(layer, tf_keras.layers.Wrapper):
            layer = layer.layer
        if isinstance(layer, KerasModelLayer):
            return layer
    raise ArgumentError(
        f"no KerasModelLayer in {getattr(tf_keras_model, 'name', tf_keras_model)!r}: pass a "
        "model made by to_tf_keras, quantization_aware, prune or cluster"
    )
