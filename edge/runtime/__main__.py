"""``python -m keras_transformer_edge.runtime``: see cli.py."""

from keras_transformer_edge.runtime.cli import main

if __name__ == "__main__":
    main()
