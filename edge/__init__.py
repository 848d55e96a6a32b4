"""keras_transformer_edge: TFLite conversion and quantization, and the device runtime.

Installed as ``keras_transformer_edge`` (this folder is ``edge/`` in the repository). It uses
``keras_transformer`` and ``keras_transformer_pipelines`` (through the latter's public modules);
``runtime/`` uses neither, nor TensorFlow or Keras: numpy and a TFLite runtime only.
"""
