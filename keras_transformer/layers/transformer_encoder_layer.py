"""One Transformer encoder layer: self-attention and feed-forward, each a residual block."""

from __future__ import annotations

import keras

from keras_transformer.layers.transformer_layer_base import TransformerLayerBase
from keras_transformer.layers.validation import keras_mask_of


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerEncoderLayer(TransformerLayerBase):
    """Bidirectional self-attention followed by a feed-forward block.

    Args:
        num_heads: attention heads; must divide the input width.
        intermediate_dim: hidden width of the feed-forward block.
        dropout: dropout after each sublayer (and on attention weights unless
            ``attention_dropout`` is given).
        attention_dropout: dropout on the attention weights.
        activation: feed-forward activation (``"relu"``, ``"gelu"``, ``"silu"``, ...).
        gated_feedforward: use a gated (GLU) feed-forward block.
        normalize_first: pre-LN (``True``) or post-LN (``False``, the original paper).
        layer_norm_epsilon: epsilon of the LayerNormalization layers.
        num_key_value_heads: grouped-query attention (``None``: one per query head).
        use_rotary_embedding: rotary positions inside self-attention.
        rotary_max_wavelength: base of the rotary frequencies.
        sliding_window: local attention: each position sees keys within this distance.
        kernel_initializer, bias_initializer: initializers of every projection.

    Call arguments:
        inputs: ``[B, T, d]``.
        padding_mask: ``[B, T]`` boolean, ``True`` for real tokens; defaults to the
            inputs' Keras mask.
        attention_mask: boolean, broadcastable to ``[B, T, T]``.
        return_attention_scores: also return the weights ``[B, H, T, T]``.
        training: enables dropout.

    Example:
    >>> layer = TransformerEncoderLayer(num_heads=4, intermediate_dim=64)
    >>> tuple(layer(keras.ops.ones((2, 10, 32))).shape)
    (2, 10, 32)
    """

    def build(self, inputs_shape):
        width = self._width(inputs_shape, "inputs")
        self.self_attention = self._make_attention(width, "self_attention", self_attention=True)
        self.self_attention.build(inputs_shape)
        self.self_attention_norm = self._make_norm("self_attention_norm")
        self.self_attention_norm.build(inputs_shape)
        self.self_attention_dropout = self._make_dropout("self_attention_dropout")
        self.feedforward = self._make_feedforward()
        self.feedforward.build(inputs_shape)
        self.feedforward_norm = self._make_norm("feedforward_norm")
        self.feedforward_norm.build(inputs_shape)
        self.feedforward_dropout = self._make_dropout("feedforward_dropout")

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        return_attention_scores: bool = False,
        training=None,
    ):
        if padding_mask is None:
            padding_mask = keras_mask_of(inputs)

        x = self._block_input(inputs, self.self_attention_norm)
        x, scores = self.self_attention(
            x,
            attention_mask=attention_mask,
            query_padding_mask=padding_mask,
            key_padding_mask=padding_mask,
            return_attention_scores=True,
            training=training,
        )
        x = self._block_output(
            inputs, x, self.self_attention_norm, self.self_attention_dropout, training
        )

        residual = x
        x = self.feedforward(self._block_input(x, self.feedforward_norm), training=training)
        x = self._block_output(
            residual, x, self.feedforward_norm, self.feedforward_dropout, training
        )
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
