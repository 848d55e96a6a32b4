"""keras_transformer_pipelines: tf.data input pipelines and Keras ``fit`` recipes.

Installed as ``keras_transformer_pipelines`` (this folder is ``pipelines/`` in the
repository). It uses ``keras_transformer``; ``keras_transformer`` never imports it.

What the packages after training (``keras_transformer_edge``, the command line) may use:
``runs`` (a finished run: model, tokenizer, labels, data splits), ``config`` (recipes),
``metrics``, ``decoding``, ``tokenizers`` (the special ids), ``files`` (atomic writes) and
``tensorflow_logs`` (TensorFlow imported without its start-up notices).
The recipes' modules are internal (``tests/test_layout.py`` keeps edge out of them).
"""
