"""interpkit: cache, patch, probe and attribute the internals of transformer language models.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> ik.metrics.clean_and_corrupt(model, task)["clean"] > 0      # doctest: +SKIP
    True

Importing interpkit is cheap: torch, transformer_lens and plotly load when first used.
"""

from interpkit import attribution as attribution
from interpkit import cache as cache
from interpkit import circuits as circuits
from interpkit import dictionaries as dictionaries
from interpkit import errors as errors
from interpkit import graphs as graphs
from interpkit import hooks as hooks
from interpkit import metrics as metrics
from interpkit import patching as patching
from interpkit import plots as plots
from interpkit import probing as probing
from interpkit import sites as sites
from interpkit import tasks as tasks
from interpkit.attribution import attribute as attribute
from interpkit.circuits import Circuit as Circuit
from interpkit.circuits import discover_circuit as discover_circuit
from interpkit.circuits import faithfulness as faithfulness
from interpkit.errors import InterpkitError as InterpkitError
from interpkit.models import Model as Model
from interpkit.models import load_model as load_model
from interpkit.patching import patch as patch
from interpkit.results import Result as Result
from interpkit.tasks import Task as Task

__version__ = "0.1.0"

__all__ = [
    "Circuit",
    "InterpkitError",
    "Model",
    "Result",
    "Task",
    "attribute",
    "attribution",
    "cache",
    "circuits",
    "dictionaries",
    "discover_circuit",
    "errors",
    "faithfulness",
    "graphs",
    "hooks",
    "load_model",
    "metrics",
    "patch",
    "patching",
    "plots",
    "probing",
    "sites",
    "tasks",
]
