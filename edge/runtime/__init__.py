"""The device runtime: what runs on the device, with the Python standard library and numpy only.

Nothing here imports TensorFlow, Keras or the ``sentencepiece`` library, and this package imports
none of its modules eagerly.
"""
