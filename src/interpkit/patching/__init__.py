"""Activation patching: batched sweeps over every site, ablations, path patching."""

from interpkit.errors import PatchingError as PatchingError
from interpkit.patching._api import ablate as ablate
from interpkit.patching._api import patch as patch
from interpkit.runtime import ABLATIONS as ABLATIONS
from interpkit.runtime import PATCH_SITES as PATCH_SITES

__all__ = ["ABLATIONS", "PATCH_SITES", "PatchingError", "ablate", "patch"]

from interpkit.patching._path import path_patch as path_patch

__all__ += ["path_patch"]
