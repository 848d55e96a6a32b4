"""Training objectives for token-level tasks: label-smoothed masked loss, masked accuracy,
and learning-rate schedules with warmup. Written with ``keras.ops``.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines import private_api

# Keras reduces a loss over the mask attached to its per-token values (a token-level mean);
# its setter is private, so it is reached in one place.


@keras.saving.register_keras_serializable(package="keras_transformer_pipelines")
class MaskedSparseCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy from logits with label smoothing, averaged over real tokens.

    With smoothing ``e`` over ``V`` classes the target distribution is ``1 - e`` on the true
    class plus ``e / V`` everywhere, so the loss per token is
    ``(1 - e) * (lse(z) - z_y) + e * (lse(z) - mean(z))``. Keras's sparse loss has no label
    smoothing, and its dense one would need one-hot targets of ``V`` floats per token.

    Args:
        label_smoothing: ``e`` in ``[0, 1)``.
        padding_id: target id that is not a token; those positions add nothing to the loss
            and are not counted in the mean.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        padding_id: int = 0,
        name: str = "masked_sparse_crossentropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise InputProblem(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.padding_id = padding_id

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        logits = ops.cast(y_pred, "float32")
        log_normalizer = ops.logsumexp(logits, axis=-1)
        true_logit = ops.squeeze(
            ops.take_along_axis(logits, ops.expand_dims(ops.maximum(y_true, 0), -1), axis=-1),
            axis=-1,
        )
        loss = log_normalizer - true_logit
        if self.label_smoothing:
            uniform = log_normalizer - ops.mean(logits, axis=-1)
            loss = (1.0 - self.label_smoothing) * loss + self.label_smoothing * uniform
        mask = ops.not_equal(y_true, self.padding_id)
        loss = ops.where(mask, loss, 0.0)
        private_api.set_keras_mask(loss, mask)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "padding_id": self.padding_id})
        return config


def _token_matches(y_true, y_pred, padding_id):
    y_true = ops.cast(y_true, "int32")
    matches = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
    return matches, ops.cast(ops.not_equal(y_true, padding_id), "float32")


@keras.saving.register_keras_serializable(package="keras_transformer_pipelines")
class MaskedAccuracy(keras.metrics.Metric):
    """Share of real (non-padding) target tokens whose argmax prediction is right."""

    def __init__(self, padding_id: int = 0, name: str = "masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.padding_id = padding_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        matches, mask = _token_matches(y_true, y_pred, self.padding_id)
        if sample_weight is not None:
            mask = mask * ops.cast(sample_weight, "float32")
        self.correct.assign_add(ops.sum(matches * mask))
        self.count.assign_add(ops.sum(mask))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "padding_id": self.padding_id}


@keras.saving.register_keras_serializable(package="keras_transformer_pipelines")
class InverseSquareRootSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The original Transformer's schedule: ``scale * d^-0.5 * min(s^-0.5, s * w^-1.5)``.

    It rises linearly for ``warmup_steps`` steps, peaks at ``scale * (d * w)^-0.5``, then
    decays as the inverse square root of the step ``s`` (counted from 1).
    """

    def __init__(self, model_dim: int, warmup_steps: int = 4000, scale: float = 1.0):
        if warmup_steps < 1 or model_dim < 1:
            raise InputProblem(
                f"model_dim and warmup_steps must be >= 1, got {model_dim}, {warmup_steps}"
            )
        self.model_dim = model_dim
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        return (
            self.scale
            * self.model_dim**-0.5
            * ops.minimum(ops.rsqrt(step), step * float(self.warmup_steps) ** -1.5)
        )

    def get_config(self):
        return {"model_dim": self.model_dim, "warmup_steps": self.warmup_steps, "scale": self.scale}


def cosine_with_warmup(
    peak_learning_rate: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.0
) -> keras.optimizers.schedules.CosineDecay:
    """Linear warmup to ``peak_learning_rate``, then cosine decay (Keras's ``CosineDecay``)."""
    if total_steps <= warmup_steps:
        raise InputProblem(f"total_steps={total_steps} must exceed warmup_steps={warmup_steps}")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )
