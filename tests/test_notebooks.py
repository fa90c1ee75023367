"""Every notebook executes top to bottom (outputs not compared), and its jupytext pair is in sync.

The ``.py`` (py:percent) file is the source of truth; the ``.ipynb`` is its pair, kept without
outputs (regenerate with ``jupytext --sync notebooks/*.py``). Notebooks run on the toy model;
``INTERPKIT_NOTEBOOK_MODEL=smollm2-135m`` runs them on the embedded model instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))

jupytext = pytest.importorskip("jupytext", reason="jupytext is a dev dependency: pip install -e '.[dev]'")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_there_are_notebooks():
    assert {p.stem for p in SOURCES} >= {"quickstart", "patching", "probing", "circuits"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(source):
    pair = source.with_suffix(".ipynb")
    assert pair.is_file(), f"{pair.name} is missing: run jupytext --sync {source.relative_to(NOTEBOOKS.parent)}"
    from_py = jupytext.read(source)
    stored = nbformat.read(pair, as_version=4)
    assert [(c.cell_type, c.source) for c in from_py.cells] == [(c.cell_type, c.source) for c in stored.cells], (
        f"{pair.name} differs from {source.name}: run jupytext --sync notebooks/*.py"
    )
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), f"{pair.name} has outputs"
    assert "py:percent" in stored.metadata.get("jupytext", {}).get("formats", "")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes(source, monkeypatch):
    monkeypatch.setenv("INTERPKIT_NOTEBOOK_MODEL", os.environ.get("INTERPKIT_NOTEBOOK_MODEL", "toy-induction"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
