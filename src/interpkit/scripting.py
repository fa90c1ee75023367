"""Small helpers the ``experiments/`` scripts share: a dataclass config from the command line, and back.

Every experiment keeps its settings in one dataclass; its fields become ``--name`` options
(booleans as ``--name`` / ``--no-name``), and the config is recorded in the run's provenance.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class Config:
    ...     n: int = 8
    ...     model: str = "toy-induction"
    ...     plot: bool = True
    >>> config_from_args(Config, ["--n", "4", "--no-plot"])
    Config(n=4, model='toy-induction', plot=False)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_args(config_cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into ``config_cls``: one option per field."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(config_cls):
        default = field.default
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, (int, float)):
            parser.add_argument(f"--{field.name}", type=type(default), default=default)
        else:
            parser.add_argument(f"--{field.name}", default=default)
    return config_cls(**vars(parser.parse_args(argv)))


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as JSON-ready values (a Model object given as ``model`` is recorded by its spec)."""
    plain = (str, int, float, bool, type(None))
    out = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        out[field.name] = value if isinstance(value, plain) else getattr(value, "spec", repr(value))
    return out


def command_line(fallback: str) -> str:
    """The command that started this process, or ``fallback`` when called from Python."""
    return " ".join([sys.argv[0], *sys.argv[1:]]) if sys.argv and sys.argv[0] else fallback
