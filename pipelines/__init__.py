"""keras_transformer_pipelines: tf.data input pipelines and Keras ``fit`` recipes.

Installed as ``keras_transformer_pipelines`` (this folder is ``pipelines/`` in the
repository). It uses ``keras_transformer``; ``keras_transformer`` never imports it.
"""
