"""Position-wise feed-forward block, plain or gated (GLU family)."""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.layers.quantization_points import quantization_point
from keras_transformer.layers.validation import ArgumentError, clone_initializer


@keras.saving.register_keras_serializable(package="keras_transformer")
class FeedForward(keras.layers.Layer):
    """``W2 act(x W1 + b1) + b2``, or the gated ``W2 (act(x Wg) * (x Wu))`` (GLU variants).

    The gated variant (``gated=True``; with ``activation="silu"`` it is SwiGLU, with
    ``"gelu"`` GEGLU) computes the gate and up projections with one fused matmul.

    Args:
        intermediate_dim: width of the hidden layer.
        activation: any Keras activation name or callable (``"relu"``, ``"gelu"``, ``"silu"``).
        gated: use the gated form.
        dropout: dropout on the hidden activations during training.
        output_dim: width of the output; defaults to the input width.
        use_bias: whether the projections have biases.
        kernel_initializer, bias_initializer: initializers of the projections.

    Call arguments:
        inputs: ``[..., d]``.
        training: enables dropout.

    Quantization points (``QUANTIZATION_POINTS``, see
    :mod:`keras_transformer.layers.quantization_points`): the activated ``"hidden"`` layer
    and the ``"output"``.

    Example:
    >>> ffn = FeedForward(intermediate_dim=64, activation="silu", gated=True)
    >>> tuple(ffn(keras.ops.ones((2, 3, 16))).shape)
    (2, 3, 16)
    """

    QUANTIZATION_POINTS = ("hidden", "output")
    # Set by quantization tools to {point name: callable}; None computes in plain float.
    quantization_points = None

    def __init__(
        self,
        intermediate_dim: int,
        activation="relu",
        gated: bool = False,
        dropout: float = 0.0,
        output_dim: int | None = None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if intermediate_dim is None or intermediate_dim < 1:
            raise ArgumentError(
                f"FeedForward: intermediate_dim must be >= 1, got {intermediate_dim}"
            )
        self.intermediate_dim = intermediate_dim
        self.activation = keras.activations.get(activation)
        self.gated = gated
        self.dropout = dropout
        self.output_dim = output_dim
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True
        self._dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = input_shape[-1]
        hidden = self.intermediate_dim * (2 if self.gated else 1)
        self.intermediate_kernel = self.add_weight(
            name="intermediate_kernel",
            shape=(width, hidden),
            initializer=clone_initializer(self.kernel_initializer),
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.intermediate_dim, self.output_dim or width),
            initializer=clone_initializer(self.kernel_initializer),
        )
        if self.use_bias:
            self.intermediate_bias = self.add_weight(
                name="intermediate_bias", shape=(hidden,), initializer=self.bias_initializer
            )
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(self.output_dim or width,),
                initializer=self.bias_initializer,
            )

    def call(self, inputs, training=None):
        hidden = ops.matmul(inputs, self.intermediate_kernel)
        if self.use_bias:
            hidden = hidden + self.intermediate_bias
        if self.gated:
            gate, up = ops.split(hidden, 2, axis=-1)
            hidden = self.activation(gate) * up
        else:
            hidden = self.activation(hidden)
        hidden = quantization_point(self, "hidden", hidden)
        hidden = self._dropout_layer(hidden, training=training)
        output = ops.matmul(hidden, self.output_kernel)
        output = output + self.output_bias if self.use_bias else output
        return quantization_point(self, "output", output)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": keras.activations.serialize(self.activation),
                "gated": self.gated,
                "dropout": self.dropout,
                "output_dim": self.output_dim,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
