"""Circuits: sets of edges of a model's graph, their discovery and their faithfulness.

``Circuit`` (``_circuit``) holds the edges; ``run_with_edges`` (``_engine``) runs a model with
only some edges live; ``discover_circuit`` (``_discover``, ``_acdc``) finds circuits by top-n,
threshold, greedy growth or ACDC; ``faithfulness``, ``faithfulness_curve`` and ``stability``
(``_faithfulness``) measure them; ``edge_removal_scores`` (``_scores``) scores every edge by
ablating it alone; ``curve_figure`` (from :mod:`interpkit.plots`) plots a faithfulness curve.
"""

from interpkit.circuits._acdc import acdc as acdc
from interpkit.circuits._circuit import Circuit as Circuit
from interpkit.circuits._circuit import ModelIdentity as ModelIdentity
from interpkit.circuits._discover import discover_circuit as discover_circuit
from interpkit.circuits._engine import EdgeRunner as EdgeRunner
from interpkit.circuits._engine import run_with_edges as run_with_edges
from interpkit.circuits._errors import CircuitError as CircuitError
from interpkit.circuits._faithfulness import faithfulness as faithfulness
from interpkit.circuits._faithfulness import faithfulness_curve as faithfulness_curve
from interpkit.circuits._faithfulness import stability as stability
from interpkit.circuits._scores import edge_removal_scores as edge_removal_scores
from interpkit.circuits._target import CircuitWarning as CircuitWarning
from interpkit.plots import curve_figure as curve_figure

__all__ = [
    "Circuit",
    "CircuitError",
    "CircuitWarning",
    "EdgeRunner",
    "ModelIdentity",
    "acdc",
    "curve_figure",
    "discover_circuit",
    "edge_removal_scores",
    "faithfulness",
    "faithfulness_curve",
    "run_with_edges",
    "stability",
]
