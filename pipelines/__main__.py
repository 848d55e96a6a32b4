"""``python -m keras_transformer_pipelines``: the recipes' command line (see cli.py)."""

from keras_transformer_pipelines.cli import main

main()
