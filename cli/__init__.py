"""keras-transformer's command line (``keras-transformer``) and its main job.

Above the three packages: it dispatches each subcommand to the one that does the work
(``keras_transformer_pipelines``, ``keras_transformer_edge``, its runtime) and runs the main
job across all of them. Nothing imports this package.
"""
