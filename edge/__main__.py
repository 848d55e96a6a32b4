from keras_transformer_edge.cli import main

main()
