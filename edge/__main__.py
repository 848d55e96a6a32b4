from keras_transformer_pipelines.tensorflow_logs import import_tensorflow

import_tensorflow()  # before conversion imports it: its start-up notices filtered

from keras_transformer_edge.cli import main  # noqa: E402

main()
