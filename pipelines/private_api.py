"""The one door to private Keras, TensorFlow and standard-library API in
``keras_transformer_pipelines``; each use with its reason.

``tests/test_private_api.py`` fails loudly when an upgrade moves any of it.
"""

from __future__ import annotations

import types
from collections.abc import Callable


def set_keras_mask(tensor, mask) -> None:
    """Attach a Keras mask to a tensor (``keras.src.backend.common.masking``).

    A loss that returns per-token values with the padding masked tells Keras's reduction to
    average over the real tokens only; Keras reads that mask through this private accessor,
    and has no public way to set it.
    """
    from keras.src.backend.common.masking import set_keras_mask as attach

    attach(tensor, mask)


def scale_loss_for_distribution(loss):
    """``loss`` divided by the replicas in sync, as Keras's own ``compute_loss`` does
    (``keras.src.losses.loss``): a loss computed by hand in ``compute_loss`` must be scaled
    the same way, or a distributed run sums it over replicas."""
    from keras.src.losses.loss import scale_loss_for_distribution as scale

    return scale(loss)


def unscale_loss_for_distribution(loss):
    """The inverse of :func:`scale_loss_for_distribution`, for a metric's value."""
    from keras.src.losses.loss import unscale_loss_for_distribution as unscale

    return unscale(loss)


def replace_symbolic_build(model, build: Callable) -> None:
    """Give one model its own ``_maybe_symbolic_build`` (Keras 3.15's TensorFlow trainer).

    The trainer peeks at the first batch and all-reduces it across workers before building;
    that fails for dict or tuple batches under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20329). ``build(model, iterator=None, data_batch=None)`` replaces it on
    this model only.
    """
    model._maybe_symbolic_build = types.MethodType(build, model)


def symbolic_build(model, data_batch) -> None:
    """The trainer's own build from one batch (``_symbolic_build``), under its strategy."""
    model._symbolic_build(data_batch=data_batch)


def trainer_strategy(model):
    """The strategy a compiled model's trainer distributes over (``_distribute_strategy``)."""
    return model._distribute_strategy


def gettext_entries(catalog) -> dict:
    """Every entry of a ``gettext.GNUTranslations`` catalog (``_catalog``): the public API
    only looks messages up one by one, and the corpus needs them all."""
    return catalog._catalog
