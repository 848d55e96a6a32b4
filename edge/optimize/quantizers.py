"""tfmot quantizers whose ranges this project needs to control: a range quantizer that starts
from calibration and follows a moving average, one shared by several tensors (the keys and
values the ``encode`` signature packs into one int8 tensor), and a fixed range."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

Quantizer = tfmot.quantization.keras.quantizers.Quantizer


class RangeQuantizer(Quantizer):
    """Asymmetric 8-bit fake quantization of an activation with a tracked range.

    The range starts at the first batch seen in training mode (a calibration pass) and then
    follows an exponential moving average (``ema_decay``). tfmot's ``MovingAverageQuantizer``
    starts from [-6, 6] with a decay of 0.999, which a short fine-tuning never moves.
    """

    def __init__(self, num_bits: int = 8, ema_decay: float = 0.99):
        self.num_bits = num_bits
        self.ema_decay = ema_decay

    def build(self, tensor_shape, name, layer):
        def weight(suffix):
            return layer.add_weight(
                f"{name}_{suffix}",
                shape=(),
                initializer=tf_keras.initializers.Constant(0.0),
                trainable=False,
            )

        return {"min_var": weight("min"), "max_var": weight("max")}

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = weights["min_var"], weights["max_var"]
        if training:
            batch_low = tf.minimum(tf.reduce_min(inputs), 0.0)
            batch_high = tf.maximum(tf.reduce_max(inputs), 0.0)
            fresh = tf.logical_and(tf.equal(low, 0.0), tf.equal(high, 0.0))
            decay = self.ema_decay
            new_low = tf.where(fresh, batch_low, decay * low + (1 - decay) * batch_low)
            new_high = tf.where(fresh, batch_high, decay * high + (1 - decay) * batch_high)
            with tf.control_dependencies([low.assign(new_low), high.assign(new_high)]):
                return tf.quantization.fake_quant_with_min_max_vars(
                    inputs, tf.identity(new_low), tf.identity(new_high), num_bits=self.num_bits
                )
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, low, high, num_bits=self.num_bits
        )

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay}

    def __eq__(self, other):
        return isinstance(other, RangeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class SharedRangeQuantizer(RangeQuantizer):
    """A :class:`RangeQuantizer` whose range is shared by every quantizer of the same
    ``key`` in one wrapper: tensors that the int8 model packs into one tensor must have one
    scale (the cross-attention keys and values of all decoder layers, stacked into the
    ``encode`` signature's ``cross_attention_cache``). The range follows all of them."""

    def __init__(self, key: str, num_bits: int = 8, ema_decay: float = 0.99):
        super().__init__(num_bits, ema_decay)
        self.key = key

    def build(self, tensor_shape, name, layer):
        shared = layer.__dict__.get("_shared_quantizer_ranges")
        if shared is None:
            shared = {}
            object.__setattr__(layer, "_shared_quantizer_ranges", shared)
        if self.key not in shared:
            shared[self.key] = super().build(tensor_shape, f"shared_{self.key}", layer)
        return shared[self.key]

    def get_config(self):
        return {**super().get_config(), "key": self.key}

    def __eq__(self, other):
        return isinstance(other, SharedRangeQuantizer) and self.get_config() == other.get_config()


class FixedRangeQuantizer(Quantizer):
    """8-bit fake quantization on a fixed range: the softmax output, whose int8 TFLite kernel
    always writes scale 1/256 and zero point -128, i.e. the range [0, 255/256]."""

    def __init__(self, low: float = 0.0, high: float = 255.0 / 256.0, num_bits: int = 8):
        self.low, self.high, self.num_bits = float(low), float(high), num_bits

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.quantization.fake_quant_with_min_max_args(
            inputs, min=self.low, max=self.high, num_bits=self.num_bits
        )

    def get_config(self):
        return {"low": self.low, "high": self.high, "num_bits": self.num_bits}

    def __eq__(self, other):
        return isinstance(other, FixedRangeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


def _weight_quantizer() -> Quantizer:
    # Symmetric per-tensor int8 in [-127, 127], the TFLite weight format.
    return tfmot.quantization.keras.quantizers.LastValueQuantizer(
        num_bits=8, per_axis=False, symmetric=True, narrow_range=True
    )
