"""Bad input gets one clear line naming the argument and its shape, at any nesting depth."""

import numpy as np
import pytest

from keras_transformer import ArgumentError
from keras_transformer.layers import MultiHeadAttention, TransformerDecoder
from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64)


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "\x1b" not in message, message
    return message


CASES = [
    (
        lambda: MultiHeadAttention(4, 8)(
            np.zeros((2, 6, 32), "float32"), attention_mask=np.ones((2, 6, 5), bool)
        ),
        r"`attention_mask` of shape \(2, 6, 5\) does not broadcast",
    ),
    (
        lambda: Seq2SeqTransformer(50, 50, 12, 12, **SMALL)(np.ones((2, 5), "int32")),
        "inputs must be a dict",
    ),
    (
        lambda: TransformerLanguageModel(50, 12, **SMALL)(np.ones((2, 20), "int32")),
        r"shape \(2, 20\) is longer than the model's maximum length 12",
    ),
    (
        lambda: TransformerDecoder(2, num_heads=4, intermediate_dim=64)(
            np.zeros((1, 3, 32), "float32"),
            self_attention_cache=np.zeros((1, 2, 2, 4, 8, 8), "float32"),
        ),
        "self_attention_cache needs cache_index",
    ),
]


@pytest.mark.parametrize("trigger, message", CASES)
def test_errors_are_one_line_argument_errors(trigger, message):
    with pytest.raises(ArgumentError, match=message) as caught:
        trigger()
    assert isinstance(caught.value, ValueError)
    _one_line(caught.value)
