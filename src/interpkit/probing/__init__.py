"""Probing: labelled activation datasets, batched probes over every site, controls, causal checks.

    >>> import interpkit as ik
    >>> from interpkit import probing
    >>> model = ik.load_model("smollm2-135m")                                        # doctest: +SKIP
    >>> ds = probing.collect(model, texts, labels, positions="last")                 # doctest: +SKIP
    >>> res = probing.probe(ds, "logistic")            # every layer, one batched fit # doctest: +SKIP
    >>> probing.accuracy_by_layer(res, shuffled=probing.shuffled_labels(ds))         # doctest: +SKIP

See the module docstrings of ``_dataset`` (data), ``_fit`` (methods), ``_controls`` (baselines),
``_causal`` and ``_das`` (interventions) for the methods and their references.
"""

from interpkit.plots import accuracy_by_layer as accuracy_by_layer
from interpkit.plots import das_figure as das_figure
from interpkit.plots import inlp_figure as inlp_figure
from interpkit.plots import learning_curve_figure as learning_curve_figure
from interpkit.plots import pca_figure as pca_figure
from interpkit.plots import removal_figure as removal_figure
from interpkit.plots import selectivity_figure as selectivity_figure
from interpkit.plots import steering_figure as steering_figure
from interpkit.probing._causal import inlp as inlp
from interpkit.probing._causal import remove as remove
from interpkit.probing._causal import steer as steer
from interpkit.probing._controls import control_labels as control_labels
from interpkit.probing._controls import control_task as control_task
from interpkit.probing._controls import learning_curve as learning_curve
from interpkit.probing._controls import random_init_control as random_init_control
from interpkit.probing._controls import random_init_model as random_init_model
from interpkit.probing._controls import shuffled_labels as shuffled_labels
from interpkit.probing._das import das as das
from interpkit.probing._das import following_weights as following_weights
from interpkit.probing._das import rowspace_split as rowspace_split
from interpkit.probing._dataset import ProbeDataset as ProbeDataset
from interpkit.probing._dataset import collect as collect
from interpkit.probing._dataset import recollect as recollect
from interpkit.probing._errors import ProbeError as ProbeError
from interpkit.probing._fit import METHODS as METHODS
from interpkit.probing._intervene import dataset_task as dataset_task
from interpkit.probing._pca import pca as pca
from interpkit.probing._positions import strip_marks as strip_marks
from interpkit.probing._probes import Probes as Probes
from interpkit.probing._probes import fit_probes as fit_probes
from interpkit.probing._probes import probe as probe
from interpkit.probing._store import from_store as from_store

__all__ = [
    "METHODS",
    "ProbeDataset",
    "ProbeError",
    "Probes",
    "accuracy_by_layer",
    "collect",
    "control_labels",
    "control_task",
    "das",
    "das_figure",
    "dataset_task",
    "fit_probes",
    "following_weights",
    "from_store",
    "inlp",
    "inlp_figure",
    "learning_curve",
    "learning_curve_figure",
    "pca",
    "pca_figure",
    "probe",
    "random_init_control",
    "random_init_model",
    "recollect",
    "removal_figure",
    "remove",
    "rowspace_split",
    "selectivity_figure",
    "shuffled_labels",
    "steer",
    "steering_figure",
    "strip_marks",
]
