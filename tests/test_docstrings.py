"""The runnable examples in the docstrings of every tfcompress module stay true.

Every module is collected from the package tree, so a new module is checked without being
listed here; a public module (no leading underscore) must have at least one example.
"""

import doctest
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfcompress"


def _modules():
    """``{module name: whether it must have an example}``: public modules (no leading
    underscore) that are not packages (a package's docstring is a table of contents)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        public = not any(part.startswith("_") for part in parts[1:])
        names[".".join(parts)] = public and not package
    return names


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if MODULES[name]:
        assert result.attempted > 0, f"public module {name} has no runnable example"
