"""The device runtime: what runs on the device, with the Python standard library and numpy only.

Nothing here imports TensorFlow, Keras or the ``sentencepiece`` library, and this package imports
none of its modules eagerly: the names below load their module on first use.

    from keras_transformer_edge.runtime import Translator
    translator = Translator.from_bundle("bundles/en-fr", num_threads=2)
    translator.translate("Open the file")

Also ``Generator``, ``Classifier``, ``Tagger``, ``open_bundle`` (any kind), ``load_bundle``,
and the errors ``BundleError``, ``InputError``, ``BackendError``. The command
line: ``python -m keras_transformer_edge.runtime --help``; benchmarks: ``benchmark.py``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Translator": "translator",
    "Generator": "generator",
    "Classifier": "classifier",
    "Tagger": "classifier",
    "open_bundle": "kinds",
    "load_bundle": "bundle",
    "Bundle": "bundle",
    "LiteModel": "interpreter",
    "BundleError": "errors",
    "InputError": "errors",
    "BackendError": "errors",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
