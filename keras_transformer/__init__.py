"""keras_transformer: Transformer layers and models in Keras 3, from attention to the edge.

The core imports only ``keras`` (math in ``keras.ops``), so it runs on the TensorFlow, JAX,
PyTorch and NumPy backends. Training recipes live in ``keras_transformer_pipelines`` and
conversion plus the device runtime in ``keras_transformer_edge``.
"""

try:
    import keras  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without Keras installed
    raise ImportError(
        "keras_transformer needs Keras 3: pip install 'keras-transformer[keras]' "
        "(the device runtime alone is keras_transformer_edge.runtime)"
    ) from error

from keras_transformer import layers, models
from keras_transformer.layers.validation import ArgumentError

__version__ = "0.1.0"
__all__ = ["ArgumentError", "layers", "models", "__version__"]
