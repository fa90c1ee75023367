"""Activation patching: batched sweeps over every site, ablations, path patching."""

from interpkit.patching._api import ablate as ablate
from interpkit.patching._api import patch as patch
from interpkit.patching._engine import PatchingError as PatchingError
from interpkit.patching._plan import PATCH_SITES as PATCH_SITES
from interpkit.patching._sources import ABLATIONS as ABLATIONS

__all__ = ["ABLATIONS", "PATCH_SITES", "PatchingError", "ablate", "patch"]

from interpkit.patching._path import path_patch as path_patch

__all__ += ["path_patch"]
