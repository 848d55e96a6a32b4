"""Copy weights from keras / keras-nlp layers into ours, for parity tests."""

from __future__ import annotations

import numpy as np


def _flat(kernel: np.ndarray) -> np.ndarray:
    """keras EinsumDense kernel ``[d, H, D]`` -> ``[d, H * D]``."""
    return kernel.reshape(kernel.shape[0], -1)


def copy_keras_mha(ours, theirs) -> None:
    """``keras.layers.MultiHeadAttention`` (or keras-nlp's cached subclass) -> ours."""
    q_kernel, q_bias = [w.numpy() for w in theirs._query_dense.weights]
    k_kernel, k_bias = [w.numpy() for w in theirs._key_dense.weights]
    v_kernel, v_bias = [w.numpy() for w in theirs._value_dense.weights]
    o_kernel, o_bias = [w.numpy() for w in theirs._output_dense.weights]
    ours.query_kernel.assign(_flat(q_kernel))
    ours.query_bias.assign(q_bias.reshape(-1))
    ours.key_value_kernel.assign(np.concatenate([_flat(k_kernel), _flat(v_kernel)], axis=1))
    ours.key_value_bias.assign(np.concatenate([k_bias.reshape(-1), v_bias.reshape(-1)]))
    ours.output_kernel.assign(o_kernel.reshape(-1, o_kernel.shape[-1]))
    ours.output_bias.assign(o_bias)


def _copy_norm(ours, theirs) -> None:
    ours.gamma.assign(theirs.gamma.numpy())
    ours.beta.assign(theirs.beta.numpy())


def _copy_feedforward(ours, theirs_layer) -> None:
    ours.intermediate_kernel.assign(theirs_layer._feedforward_intermediate_dense.kernel.numpy())
    ours.intermediate_bias.assign(theirs_layer._feedforward_intermediate_dense.bias.numpy())
    ours.output_kernel.assign(theirs_layer._feedforward_output_dense.kernel.numpy())
    ours.output_bias.assign(theirs_layer._feedforward_output_dense.bias.numpy())


def copy_keras_nlp_encoder(ours, theirs) -> None:
    copy_keras_mha(ours.self_attention, theirs._self_attention_layer)
    _copy_norm(ours.self_attention_norm, theirs._self_attention_layer_norm)
    _copy_norm(ours.feedforward_norm, theirs._feedforward_layer_norm)
    _copy_feedforward(ours.feedforward, theirs)


def copy_keras_nlp_decoder(ours, theirs) -> None:
    copy_keras_mha(ours.self_attention, theirs._self_attention_layer)
    _copy_norm(ours.self_attention_norm, theirs._self_attention_layer_norm)
    if ours.cross_attention is not None:
        copy_keras_mha(ours.cross_attention, theirs._cross_attention_layer)
        _copy_norm(ours.cross_attention_norm, theirs._cross_attention_layer_norm)
    _copy_norm(ours.feedforward_norm, theirs._feedforward_layer_norm)
    _copy_feedforward(ours.feedforward, theirs)
