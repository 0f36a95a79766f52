"""The import paths of mfd-loss 0.2, kept working for one release (until 0.4) with a ``DeprecationWarning``.

mfd-loss 0.3 grouped its flat modules into subpackages (``hub/``, ``training/``, ``consistency/``, ``cli/``)
and trimmed the top-level API to 20 names. Code written for 0.2 still runs:

- an old module (``import mfd_loss.trainer``, ``from mfd_loss.pretrained import PretrainedSpec``, a pickle that
  names one) is served by :class:`MovedModule`, created on import by a finder on ``sys.meta_path``; each of its
  attributes is looked up in the modules that now hold the code, and returns the very same object;
- a name dropped from the top level (``mfd_loss.download_pretrained``) is served by the package's
  ``__getattr__`` (:func:`package_getattr`).

Each old path warns once (``DeprecationWarning``, naming the new path, attributed to the caller's line); the
second use is silent. Nothing here is imported by the rest of the package except ``mfd_loss/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "MovedModule", "install", "package_getattr"]

REMOVED_IN = "0.4"

#: old module -> the modules that now hold its names, searched in order.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "mfd_loss.trainer": ("mfd_loss.training.config", "mfd_loss.training.data", "mfd_loss.training.evaluation",
                         "mfd_loss.training.loop", "mfd_loss.training.export"),
    "mfd_loss.checkpoint": ("mfd_loss.training.checkpoint",),
    "mfd_loss.interrupt": ("mfd_loss.training.interrupt",),
    "mfd_loss.distributed": ("mfd_loss.training.distributed",),
    "mfd_loss.datasets": ("mfd_loss.training.datasets",),
    "mfd_loss.image_sources": ("mfd_loss.training.image_sources",),
    "mfd_loss.objectives": ("mfd_loss.consistency.losses", "mfd_loss.consistency.objectives"),
    "mfd_loss.sampling": ("mfd_loss.consistency.sampling",),
    "mfd_loss.pretrained": ("mfd_loss.hub.pretrained",),
    "mfd_loss.serialization": ("mfd_loss.hub.serialization",),
    "mfd_loss.hub_download": ("mfd_loss.hub.download",),
    "mfd_loss.hub_mixin": ("mfd_loss.hub.mixin",),
    "mfd_loss.hub_publish": ("mfd_loss.hub.publish",),
    "mfd_loss.model_card": ("mfd_loss.hub.model_card",),
    "mfd_loss.hub_cli": ("mfd_loss.cli.hub",),
    "mfd_loss.demo": ("mfd_loss.cli.demo",),
}

#: top-level name dropped from ``mfd_loss.__all__`` -> the module that exports it now.
MOVED_NAMES: dict[str, str] = {
    "download_pretrained": "mfd_loss.hub",
}

_warned: set[str] = set()


def _warn_once(old: str, new: str) -> None:
    if old in _warned:
        return
    _warned.add(old)
    # stacklevel 3: this function, the __getattr__ that called it, then the caller's line.
    warnings.warn(f"{old} is deprecated: use {new} (the old path is removed in mfd-loss {REMOVED_IN})",
                  DeprecationWarning, stacklevel=3)


def _public_path(module_name: str, name: str) -> str:
    """The shortest path a user should write: the subpackage when it exports the name, else the module."""
    package = module_name.rpartition(".")[0]
    exported = getattr(sys.modules.get(package), "__all__", ())
    return f"{package}.{name}" if name in exported else f"{module_name}.{name}"


class MovedModule(types.ModuleType):
    """An old module: attributes come from the modules that now hold them (same objects), warning once each."""

    _targets: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        for target in self._targets:
            module = importlib.import_module(target)
            if name in vars(module):
                _warn_once(f"{self.__name__}.{name}", _public_path(target, name))
                return vars(module)[name]
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute "
                             f"{name!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for t in self._targets for n in vars(importlib.import_module(t)) if not n.startswith("__")})


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Creates a :class:`MovedModule` when an old module path is imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED_MODULES[module.__name__]
        module._targets = targets
        module.__doc__ = (f"Deprecated alias of {', '.join(targets)} (mfd-loss 0.2 layout; removed in "
                          f"{REMOVED_IN}).")


def install() -> None:
    """Put the finder of old module paths first on ``sys.meta_path`` (once), ahead of finders that could map
    them onto stale files (an editable install of another checkout)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


def package_getattr(name: str) -> Any:
    """``mfd_loss.__getattr__``: old top-level names and old module attributes (``mfd_loss.trainer``)."""
    if name in MOVED_NAMES:
        module = importlib.import_module(MOVED_NAMES[name])
        _warn_once(f"mfd_loss.{name}", f"{MOVED_NAMES[name]}.{name}")
        return getattr(module, name)
    if f"mfd_loss.{name}" in MOVED_MODULES:
        return importlib.import_module(f"mfd_loss.{name}")
    raise AttributeError(f"module 'mfd_loss' has no attribute {name!r}")
