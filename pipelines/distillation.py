"""Knowledge distillation: train a small student on a frozen teacher's softened outputs.

:class:`Distiller` is a ``keras.Model`` trained with plain ``fit`` on the student's own
``(inputs, labels)`` datasets. Its loss mixes the student's usual (hard-label) loss with the
temperature-scaled KL divergence from the teacher (Hinton et al., 2015). Written with
``keras.ops``.
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines import private_api

# Keras divides every loss by the number of replicas under a ``tf.distribute`` strategy (and
# undoes it for the reported value); the KL term follows the same rule. The helpers are
# private, so they are reached in one place.


def distillation_kl(teacher_logits, student_logits, temperature: float = 1.0):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last axis.

    Args:
        teacher_logits, student_logits: logits of the same shape ``[..., V]``.
        temperature: ``T > 0``; larger values soften both distributions.

    Returns:
        The per-position values, shape ``[...]`` (float32), not reduced.
    """
    teacher = ops.cast(teacher_logits, "float32") / temperature
    student = ops.cast(student_logits, "float32") / temperature
    teacher_log_probs = ops.log_softmax(teacher, axis=-1)
    student_log_probs = ops.log_softmax(student, axis=-1)
    kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return kl * (temperature**2)


def _freeze(model: keras.Model) -> None:
    # Setting ``trainable = False`` again is a no-op on the TensorFlow backend (its
    # ``__setattr__`` skips assignments of an identical value), so variables created after the
    # first assignment are frozen one by one.
    model.trainable = False
    for variable in model.weights:
        variable.trainable = False


# What a student copies whole from its teacher (the stacks are copied layer by layer).
_WHOLE = ("encoder_embedding", "decoder_embedding", "output_head")


def teacher_layers_for(teacher_count: int, student_count: int) -> list[int]:
    """Which of the teacher's layers starts each of the student's, bottom to top.

    A shallower student keeps layers spread evenly from the teacher's first to its last (the
    layer-dropping start of DistilBERT and of shallow-decoder students); one layer keeps the
    teacher's last, whose output the copied final norm and output head were trained on.
    Measured on the main job's en-fr teacher (3+3 layers, 811 steps; greedy BLEU / chrF on
    300 validation sentences after 4 minutes of distillation): a 3+1 student from the last
    decoder layer 21.61 / 47.04, from the first 19.42 / 46.92, the teacher 17.77 / 43.76; a
    6+1 student (each encoder layer repeated) 18.22 / 43.52. A deeper student repeats each
    teacher layer in turn.
    """
    if teacher_count < 1 or student_count < 1:
        raise InputProblem(f"layer counts must be >= 1, got {teacher_count} and {student_count}")
    if student_count == 1:
        return [teacher_count - 1]
    if student_count <= teacher_count:
        step = (teacher_count - 1) / (student_count - 1)
        return [round(index * step) for index in range(student_count)]
    return [index * teacher_count // student_count for index in range(student_count)]


def start_from_teacher(student: keras.Model, teacher: keras.Model) -> None:
    """Copy a seq2seq teacher's weights into a student of the same width before distilling.

    The embeddings, the output projection and each stack's final norm are copied whole; each
    student layer starts as the teacher layer :func:`teacher_layers_for` names. A student
    that starts from its teacher's encoder and embeddings needs far fewer steps than one from
    random weights, and a 10-minute budget gives about a thousand on a 2-core CPU.
    """
    for name in (*_WHOLE, "encoder", "decoder"):
        if not (hasattr(student, name) and hasattr(teacher, name)):
            raise InputProblem(f"starting a student from its teacher needs seq2seq models ({name})")
    pairs = [(getattr(student, name), getattr(teacher, name)) for name in _WHOLE]
    for stack in ("encoder", "decoder"):
        student_stack, teacher_stack = getattr(student, stack), getattr(teacher, stack)
        pairs.append((student_stack.final_norm, teacher_stack.final_norm))
        chosen = teacher_layers_for(len(teacher_stack.layers), len(student_stack.layers))
        pairs += [(student_stack.layers[i], teacher_stack.layers[j]) for i, j in enumerate(chosen)]
    for student_layer, teacher_layer in pairs:
        if student_layer is None and teacher_layer is None:
            continue  # e.g. no final norm (post-LN stacks)
        shapes = [tuple(w.shape) for w in getattr(student_layer, "weights", [])]
        weights = getattr(teacher_layer, "weights", None)
        if weights is None or shapes != [tuple(w.shape) for w in weights]:
            raise InputProblem(
                f"the student's {getattr(student_layer, 'name', student_layer)} does not have "
                "its teacher's shapes; start it from random weights (distillation.initialize: "
                "random)"
            )
        student_layer.set_weights([ops.convert_to_numpy(w) for w in weights])


@keras.saving.register_keras_serializable(package="keras_transformer_pipelines")
class Distiller(keras.Model):
    """A trainable student distilled from a frozen teacher, trained with ``fit``.

    The loss is ``alpha * hard + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)`` where
    ``hard`` is the loss given to :meth:`compile` (the student's usual loss, with any
    regularization losses of the student) and ``p^T = softmax(logits / T)``. For sequence
    outputs (logits ``[B, T, V]``) the KL is averaged over the target positions whose label
    is not ``padding_id``; for classification (logits ``[B, C]``) over the examples. Sample
    weights, if the dataset has them, weight the KL as they weight the hard loss.

    The teacher is called with ``training=False`` and made non-trainable
    (``teacher.trainable = False``); only the student's weights are updated. The model's
    output is the student's logits, so compiled metrics see the student's predictions, and
    ``fit`` also reports ``distillation_loss`` (the ``T^2``-scaled KL) and, if ``alpha > 0``,
    ``hard_loss``.
    The student is an ordinary model throughout: after training, use or save it alone.

    Args:
        student: the model to train; logits out.
        teacher: a (normally trained) model taking the same inputs, with logits of the same
            shape as the student's.
        temperature: ``T > 0``; softens both distributions in the KL term.
        alpha: weight of the hard loss, in ``[0, 1]``; ``0`` trains on the teacher alone
            (then ``compile`` needs no ``loss``).
        padding_id: label id of padding positions in sequence outputs (logits of rank 3 or
            more), left out of the KL mean; ``None`` averages over every position. Ignored
            for rank-2 (classification) logits.

    Call arguments:
        inputs: the student's inputs (e.g. token ids, or the ``Seq2SeqTransformer`` dict).
        training: passed to the student.

    Example:
    >>> import numpy as np
    >>> from keras_transformer.models import SequenceClassifier
    >>> settings = dict(num_heads=2, num_layers=1, dropout=0.0)
    >>> teacher = SequenceClassifier(50, 8, 3, hidden_dim=32, intermediate_dim=64, **settings)
    >>> student = SequenceClassifier(50, 8, 3, hidden_dim=16, intermediate_dim=32, **settings)
    >>> token_ids = np.random.default_rng(0).integers(1, 50, (32, 8))
    >>> labels = np.arange(32) % 3
    >>> distiller = Distiller(student, teacher, temperature=2.0, alpha=0.5, padding_id=None)
    >>> distiller.compile(
    ...     optimizer="adam",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ... )
    >>> history = distiller.fit(token_ids, labels, batch_size=16, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['distillation_loss', 'hard_loss', 'loss']
    >>> tuple(student.predict(token_ids, verbose=0).shape)
    (32, 3)
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        temperature: float = 2.0,
        alpha: float = 0.5,
        padding_id: int | None = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(temperature, bool) or not (
            isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0
        ):
            raise InputProblem(
                f"Distiller: temperature must be a finite number > 0, got {temperature!r}"
            )
        if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0.0 <= alpha <= 1.0):
            raise InputProblem(f"Distiller: alpha must be a number in [0, 1], got {alpha!r}")
        if padding_id is not None and (
            isinstance(padding_id, bool) or not isinstance(padding_id, numbers.Integral)
        ):
            raise InputProblem(f"Distiller: padding_id must be an int or None, got {padding_id!r}")
        if student is teacher:
            raise InputProblem("Distiller: student and teacher must be different models")
        self.student = student
        self.teacher = teacher
        _freeze(teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.padding_id = None if padding_id is None else int(padding_id)
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss") if alpha > 0 else None
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    def compile(self, optimizer="rmsprop", loss=None, **kwargs) -> None:
        """``keras.Model.compile``; ``loss`` is the student's hard loss (needed if alpha > 0)."""
        if loss is None and self.alpha > 0:
            raise InputProblem(
                f"Distiller: alpha={self.alpha} > 0 needs the student's loss: compile(loss=...)"
            )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def build(self, inputs_shape=None) -> None:
        for model in (self.student, self.teacher):
            if not model.built:
                model.build(inputs_shape)
        _freeze(self.teacher)  # again: its variables may have been created just now
        self.built = True

    def call(self, inputs, training: bool | None = None):
        return self.student(inputs, training=training)

    def _kl_weights(self, y, student_logits, sample_weight):
        """Weights of the per-position KL and the number of positions it is averaged over."""
        rank = len(student_logits.shape)
        if rank > 2 and self.padding_id is not None:
            weights = ops.cast(ops.not_equal(ops.cast(y, "int32"), self.padding_id), "float32")
        else:
            weights = ops.ones(ops.shape(student_logits)[:-1], "float32")
        count = ops.sum(weights)
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < rank - 1:
                sample_weight = ops.expand_dims(sample_weight, -1)
            weights = weights * sample_weight
        return weights, count

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training: bool = True):
        if y_pred is None:
            y_pred = self(x, training=training)
        teacher_logits = ops.stop_gradient(self.teacher(x, training=False))
        kl = distillation_kl(teacher_logits, y_pred, self.temperature)
        weights, count = self._kl_weights(y, y_pred, sample_weight)
        distillation_loss = private_api.scale_loss_for_distribution(
            ops.divide_no_nan(ops.sum(kl * weights), count)
        )
        self.distillation_loss_tracker.update_state(
            private_api.unscale_loss_for_distribution(distillation_loss)
        )
        total = (1.0 - self.alpha) * distillation_loss
        if self.alpha > 0:
            hard_loss = super().compute_loss(x, y, y_pred, sample_weight, training)
            self.hard_loss_tracker.update_state(
                private_api.unscale_loss_for_distribution(hard_loss)
            )
            total = total + self.alpha * hard_loss
        return total

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature,
                "alpha": self.alpha,
                "padding_id": self.padding_id,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
