"""tensorflow-model-optimization for our models: quantization-aware training (attention and
feed-forward included), magnitude pruning (unstructured or 2:4), weight clustering, and a
full-int8 TFLite conversion of the quantization-aware model.

tfmot accepts tf-keras (Keras 2) models only. Every function here takes a Keras 3
``keras_transformer`` model and works on :func:`~keras_transformer_edge.tfkeras_bridge.
to_tf_keras`'s bridge, a tf-keras layer that runs the Keras 3 model itself (no second copy of
the layer math). The optimized tf-keras model trains with ``fit`` on a ``tf.data`` dataset;
:func:`strip` removes tfmot's wrappers and gives back a Keras 3 model with the optimized
weights, for Keras-side evaluation and for ``keras_transformer_edge.convert``.

Quantization-aware training
    :func:`quantization_aware` annotates the bridge with :class:`TransformerQuantizeConfig`
    and applies tfmot's ``quantize_apply``. That config hands each Keras 3 layer of the model
    to its own ``QuantizeConfig``: :class:`MultiHeadAttentionQuantizeConfig` (int8 kernels;
    fake-quant on keys, values, scaled queries, scores, the bounded masked scores, the softmax,
    the attention output and the projection; see
    :mod:`keras_transformer.layers.quantization_points`), :class:`FeedForwardQuantizeConfig`,
    :class:`DenseQuantizeConfig` and :class:`EmbeddingQuantizeConfig`. Ranges start from a
    calibration pass (:func:`calibrate`) and follow a moving average while training.
    :func:`convert_quantization_aware` writes the ``encode``/``decode`` (or ``prefill``/
    ``decode``) signatures of ``convert.py`` to a full-int8 .tflite: int8 weights and
    activations inside, float inputs and outputs, builtin ops only. Tensors without a
    fake-quant point (LayerNorm, residual sums, embeddings plus positions) take their ranges
    from a representative dataset, the same way the converter does for any QAT model.

Pruning and clustering
    :func:`prune` wraps the bridge in tfmot's ``PruneLowMagnitude`` (``structure="2:4"`` uses
    ``sparsity_m_by_n=(2, 4)``: at least 2 zeros in every 4 consecutive weights along a
    kernel's input axis) and :func:`cluster` in ``ClusterWeights``. Both act on the 2-D
    matmul kernels (attention, feed-forward, Dense heads); embeddings, biases and norms stay.
    Train with ``fit`` (pruning needs :func:`pruning_callbacks`), then :func:`strip`.

Modules: ``quantizers`` (range quantizers), ``quantize_configs`` (the layers' QuantizeConfigs
and the scheme), ``qat`` (annotate, calibrate, fit), ``sparsity`` (prune, cluster, strip),
``qat_tflite`` (the full-int8 TFLite), ``checks`` (argument checks).
"""

from keras_transformer_edge.optimize.qat import (
    MaskedCrossentropy,
    calibrate,
    quantization_aware,
    quantization_aware_training,
)
from keras_transformer_edge.optimize.qat_tflite import (
    convert_quantization_aware,
    float_operator_count,
    representative_samples,
)
from keras_transformer_edge.optimize.quantize_configs import (
    DenseQuantizeConfig,
    EmbeddingQuantizeConfig,
    FeedForwardQuantizeConfig,
    MultiHeadAttentionQuantizeConfig,
    TransformerQuantizeConfig,
    quantize_scope,
)
from keras_transformer_edge.optimize.quantizers import (
    FixedRangeQuantizer,
    RangeQuantizer,
    SharedRangeQuantizer,
)
from keras_transformer_edge.optimize.sparsity import (
    STRUCTURES,
    cluster,
    prune,
    pruning_callbacks,
    strip,
)
from keras_transformer_edge.tfkeras_bridge import KerasModelLayer, to_tf_keras

__all__ = [
    "DenseQuantizeConfig",
    "EmbeddingQuantizeConfig",
    "FixedRangeQuantizer",
    "FeedForwardQuantizeConfig",
    "KerasModelLayer",
    "MaskedCrossentropy",
    "MultiHeadAttentionQuantizeConfig",
    "RangeQuantizer",
    "STRUCTURES",
    "SharedRangeQuantizer",
    "TransformerQuantizeConfig",
    "calibrate",
    "cluster",
    "convert_quantization_aware",
    "float_operator_count",
    "prune",
    "pruning_callbacks",
    "quantization_aware",
    "quantization_aware_training",
    "quantize_scope",
    "representative_samples",
    "strip",
    "to_tf_keras",
]
