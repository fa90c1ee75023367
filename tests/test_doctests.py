"""Every example in interpkit's docstrings runs and prints what it says (examples that need the
embedded model or a user's data are marked ``+SKIP`` in place)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import interpkit

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(interpkit.__path__, "interpkit.") if not m.name.endswith("__main__")
)  # __main__ runs the CLI


def test_modules_are_found():
    assert {"interpkit.probing._fit", "interpkit.models._native"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
