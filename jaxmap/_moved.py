"""Old import paths of names that moved, kept working with a DeprecationWarning.

An old home hands such names on from its module ``__getattr__`` (:func:`old_home` makes one),
looking each up in its new module by that module's name when it is asked for: the old home does
not import the new one, so a name that moved up out of a lower package leaves no import cycle
behind.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Callable


def moved(old_module: str, name: str, new_module: str) -> Any:
    """``new_module.name``, for a caller that asked ``old_module`` for it, where it lived before;
    the warning tells the caller where it is now."""
    warnings.warn(f"{old_module}.{name} moved to {new_module}.{name}", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(new_module), name)


def old_home(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of module ``module``, the old home of ``names`` (each name -> the
    module it moved to): it hands each on with a warning (:func:`moved`)."""

    def __getattr__(name: str) -> Any:
        if name in names:
            # ``from old import name`` asks twice: the import system first checks that the name
            # is there, then the statement reads it. Only the read warns, so the caller sees one.
            if sys._getframe(1).f_code.co_name == "_handle_fromlist":
                return getattr(importlib.import_module(names[name]), name)
            return moved(module, name, names[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
