from keras_transformer_cli.main import main

main()
