"""Modules that load on first use, so that importing their user costs nothing.

The CLI imports every command module to register its commands; ``status``
must not pay for provisioning's pydantic models or the trust area's catalog
code. A command module names such a dependency with ``lazy_module`` (and
imports it normally under ``TYPE_CHECKING``, so that types are still checked).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it the first time one of its attributes is read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)


def lazy_module(name: str) -> Any:
    return LazyModule(name)


def lazy_names(package: str, where: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) of ``package``: each name in ``where`` is imported from
    its module on first use, then kept in ``namespace`` (the package's globals).

    Another name raises AttributeError, which also lets ``from package import submodule``
    load a submodule.
    """

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    return __getattr__
