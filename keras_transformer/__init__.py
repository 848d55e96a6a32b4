"""keras_transformer: Transformer layers and models in Keras 3, from attention to the edge.

The core imports only ``keras`` (math in ``keras.ops``), so it runs on the TensorFlow, JAX,
PyTorch and NumPy backends. Training recipes live in ``keras_transformer_pipelines`` and
conversion plus the device runtime in ``keras_transformer_edge``.

Keras is imported when ``layers`` or ``models`` is first used, not here: the device runtime
(no Keras) shares this package's ``errors`` module, the one table of errors and exit codes.
"""

import importlib

from keras_transformer.errors import ExitCode, ProjectError

__version__ = "0.1.0"
__all__ = ["ArgumentError", "ExitCode", "ProjectError", "layers", "models", "__version__"]


def __getattr__(name: str):
    if name in ("layers", "models"):
        return importlib.import_module(f"{__name__}.{name}")
    if name == "ArgumentError":
        return importlib.import_module(f"{__name__}.layers.validation").ArgumentError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
