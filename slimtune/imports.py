"""Objects named by the user as ``"package.module:attr.path"`` (models, data callables)."""

from __future__ import annotations

import importlib

from slimtune.errors import UserInputError


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines too) folded into one space."""
    return " ".join(str(text).split())


def import_object(target: str, *, what: str, error: type[UserInputError]) -> object:
    """The object ``target`` names; ``error`` with one line if it cannot be imported.

    ``what`` names the spec key in messages ("model", "data").
    """
    module_name, sep, attr_path = target.partition(":")
    names = attr_path.split(".")
    if (
        not sep
        or ":" in attr_path
        or not all(part.isidentifier() for part in module_name.split("."))
        or not all(name.isidentifier() for name in names)
    ):
        raise error(f"{what} target {target!r} is not of the form 'package.module:callable'")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = " (is its folder on PYTHONPATH?)" if e.name == module_name.split(".")[0] else ""
        raise error(
            f"cannot import module {module_name!r} for {what} {target!r}: {one_line(e)}{hint}"
        ) from e
    except Exception as e:
        raise error(
            f"cannot import module {module_name!r} for {what} {target!r}: "
            f"{type(e).__name__}: {one_line(e)}"
        ) from e
    for name in names:
        if not hasattr(obj, name):
            raise error(f"module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, name)
    if not callable(obj):
        raise error(f"{target!r} is not callable")
    return obj
