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


# --- one table of exit codes; the command lines catch only the project's errors ------------


def test_every_error_type_carries_its_exit_code_from_the_one_table():
    from keras_transformer.errors import ExitCode, InputProblem, ProjectError
    from keras_transformer_cli.main_job import JobError
    from keras_transformer_edge.convert import ConversionError
    from keras_transformer_edge.parity import ParityError
    from keras_transformer_edge.runtime import errors as runtime
    from keras_transformer_pipelines.config import ConfigError
    from keras_transformer_pipelines.readers import MalformedInputError

    expected = {
        ArgumentError: 2,
        ConfigError: 2,
        MalformedInputError: 2,
        ConversionError: 2,
        runtime.InputError: 2,
        ParityError: 1,
        JobError: 1,
        runtime.BackendError: 1,
        runtime.BundleError: 3,
        runtime.ModelError: 3,
    }
    for kind, code in expected.items():
        assert issubclass(kind, ProjectError) and kind.exit_code == ExitCode(code), kind
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 130]
    assert issubclass(InputProblem, ValueError)  # callers that catch ValueError still do


def test_report_error_prints_one_line_for_ours_and_the_systems(capsys):
    from keras_transformer.errors import ExitCode, InputProblem, MissingInput, report_error

    assert report_error(InputProblem("first\nsecond")) == ExitCode.BAD_INPUT
    assert report_error(MissingInput("run/model.keras: missing")) == ExitCode.BAD_INPUT
    assert report_error(PermissionError(13, "Permission denied", "out/x")) == ExitCode.FAILED
    assert capsys.readouterr().err.splitlines() == [
        "error: first; second",
        "error: run/model.keras: missing",
        "error: out/x: Permission denied",
    ]


@pytest.mark.parametrize("package", ["pipelines", "main_job"])
def test_a_bug_keeps_its_traceback_and_our_errors_get_one_line(monkeypatch, capsys, package):
    from keras_transformer.errors import MissingInput

    if package == "pipelines":
        from keras_transformer_pipelines import cli as module

        target, argv = "load_recipe", ["train", "recipe.yaml"]
    else:
        from keras_transformer_cli import main_job as module

        target, argv = "main_job", []

    def raising(error):
        def fail(*args, **kwargs):
            raise error

        return fail

    monkeypatch.setattr(module, target, raising(MissingInput("recipe.yaml: no such file")))
    assert module.run(argv) == 2
    assert capsys.readouterr().err == "error: recipe.yaml: no such file\n"
    monkeypatch.setattr(module, target, raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):  # not turned into "bad input"
        module.run(argv)
