"""One module per ``slimtune`` subcommand.

Each module defines ``NAME``, ``HELP``, ``ORDER`` (its place in ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``. The CLI finds them by listing this
package, so a new command is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """Every command module of this package, in ``ORDER``."""
    mods = [importlib.import_module(f"{__name__}.{info.name}")
            for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: (m.ORDER, m.NAME))
