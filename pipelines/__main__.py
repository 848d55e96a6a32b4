"""``python -m keras_transformer_pipelines``: the recipes' command line (see cli.py)."""

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow

import_tensorflow()  # before the recipes import it: its start-up notices filtered

from keras_transformer_pipelines.cli import main  # noqa: E402

main()
