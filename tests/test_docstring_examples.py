"""Every ``Example:`` in the public docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import keras
import pytest

import keras_transformer

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(keras_transformer.__path__, "keras_transformer.")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, globs={"keras": keras, **vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
