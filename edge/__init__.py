"""keras_transformer_edge: TFLite conversion and quantization, and the device runtime.

Installed as ``keras_transformer_edge`` (this folder is ``edge/`` in the repository).
"""
