"""Models built from the layers: seq2seq, language model, sequence and token classifiers."""

from keras_transformer.models.encoder_classifiers import SequenceClassifier, TokenClassifier
from keras_transformer.models.language_model import TransformerLanguageModel
from keras_transformer.models.seq2seq_transformer import Seq2SeqTransformer

__all__ = [
    "Seq2SeqTransformer",
    "SequenceClassifier",
    "TokenClassifier",
    "TransformerLanguageModel",
]
