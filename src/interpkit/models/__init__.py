"""Loading models: ``load_model`` for every spec form, the ``Model`` wrapper, native files."""

from interpkit.models._load import list_models as list_models
from interpkit.models._load import load_model as load_model
from interpkit.models._model import Model as Model
from interpkit.models._model import ModelConfig as ModelConfig
from interpkit.models._native import boot_native as boot_native
from interpkit.models._native import save_native as save_native

__all__ = ["Model", "ModelConfig", "boot_native", "list_models", "load_model", "save_native"]
