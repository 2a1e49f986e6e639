"""The runnable examples in the pruning docstrings stay true."""

import doctest
import importlib

import pytest

MODULES = ["tfcompress.pruning", "tfcompress.pruning.graph", "tfcompress.pruning.criteria",
           "tfcompress.pruning.masks", "tfcompress.pruning.apply", "tfcompress.pruning.rebuild",
           "tfcompress.pruning.counting"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name == "tfcompress.pruning"
