"""One door for every plug-in: advantage estimators, loss aggregations, curricula, verifiers, engines.

Each kind has one `Registry`. A name given in the config resolves, in this order, to:

1. a registered name: a built-in, or user code decorated with ``@REGISTRY.register("name")`` in a
   module that has been imported;
2. an entry point of an installed package, in the group ``rlreason.<kind>s`` (e.g.
   ``[project.entry-points."rlreason.estimators"] my_adv = "team_pkg.adv:my_adv"``; the groups are
   rlreason.estimators, rlreason.loss_aggregations, rlreason.policy_losses, rlreason.curricula,
   rlreason.verifiers, rlreason.engines and rlreason.environments);
3. an import path ``module:attr`` (a module on ``sys.path``, e.g. the working directory).

A name that is none of these is an error that lists the known names. Built-ins whose modules are heavy
to import (vLLM, math-verify) are registered by import path and imported on first use, so that
asking for one never imports the others. `import_path(name)` gives the ``module:attr`` path of any
resolvable name, which is what crosses a process boundary (verifier workers, Ray actors) and lets a
fresh process find a plug-in that was registered only in the driver.

This module imports nothing from rlreason: every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)


class UnknownPlugin(LookupError):
    """A name that is not registered, not an entry point and not an importable ``module:attr``."""


class Registry:
    def __init__(self, kind: str, config_key: str, error: type[Exception] = UnknownPlugin, plural: str | None = None):
        """`kind`: singular noun for messages ("estimator"); `config_key`: where users name one
        ("algo.estimator"); `error`: the exception raised for an unknown or broken name; `plural`:
        when not kind + "s". The entry-point group is rlreason.<plural, spaces as underscores>."""
        self.kind, self.config_key, self.error = kind, config_key, error
        self.plural = plural or f"{kind}s"
        self.entry_point_group = f"rlreason.{self.plural.replace(' ', '_')}"
        self._entries: dict[str, Any] = {}  # name -> the object, or "module:attr" to import on first use
        self._builtin: set[str] = set()
        self._entry_points: dict[str, str] | None = None

    # -- registration -----------------------------------------------------------------------------
    def register(self, name: str, **attrs) -> Callable:
        """Decorator: make `obj` available as `name`; `attrs` are set on it (e.g. an estimator's `needs`)."""

        def deco(obj):
            for key, value in attrs.items():
                setattr(obj, key, value)
            self._entries[name] = obj
            return obj

        return deco

    def register_path(self, name: str, path: str) -> None:
        """Register a built-in `name` as the import path `module:attr`, imported when first asked for."""
        self._entries[name] = path
        self._builtin.add(name)

    def unregister(self, name: str) -> None:
        """Forget `name` (tests that register throw-away plug-ins clean up with this)."""
        self._entries.pop(name, None)
        self._builtin.discard(name)

    # -- lookup -------------------------------------------------------------------------------------
    def entry_points(self) -> dict[str, str]:
        """Names that installed packages declare in this kind's entry-point group (built-ins win)."""
        if self._entry_points is None:
            found = {}
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                if ep.name in self._builtin:
                    log.warning("entry point %s = %s (group %s) is ignored: %r is a built-in %s", ep.name, ep.value,
                                self.entry_point_group, ep.name, self.kind)
                    continue
                found[ep.name] = ep.value
            self._entry_points = found
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self.entry_points()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.entry_points()

    def unknown(self, name: str) -> Exception:
        return self.error(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names())}, "
                          f"or give an import path such as 'my_module:my_{self.kind.replace(' ', '_')}'.")

    def import_path(self, name: str) -> str:
        """The ``module:attr`` path of a registered name, an entry point or an import path."""
        entry = self._entries.get(name)
        if isinstance(entry, str):
            return entry
        if entry is not None:
            return f"{entry.__module__}:{entry.__qualname__}"
        if name in self.entry_points():
            return self.entry_points()[name]
        if ":" in name:
            return name
        raise self.unknown(name)

    def get(self, name: str) -> Any:
        """The object `name` stands for, imported if need be."""
        entry = self._entries.get(name)
        if entry is not None and not isinstance(entry, str):
            return entry
        path = self.import_path(name)
        obj = load_attr(path, f"{self.kind} {name!r}", self.error)
        if name in self._entries:  # a lazily registered built-in: import once
            self._entries[name] = obj
        return obj


IMPORT_TIMEOUT_S = 60.0  # a user module that has not finished importing by then is reported, not waited for
OWN_PACKAGES = ("rlreason", "rewards", "curricula")  # imported directly; everything else under the time limit


def load_attr(path: str, what: str, error: type[Exception] = UnknownPlugin) -> Any:
    """Import ``module:attr`` (attr may be dotted); `error` names `what` and the reason on failure.
    A user's module gets `IMPORT_TIMEOUT_S` (env RLREASON_IMPORT_TIMEOUT_S) to import: one that hangs at
    import (a network call, a lock) is an error naming it, not a run that never starts."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise error(f"{what}: {path!r} is not an import path of the form 'module:attr'")
    try:
        obj = _import(module_name)
    except ImportError as e:
        raise error(f"cannot import module {module_name!r} for {what}: {e}") from None
    except TimeoutError as e:
        raise error(f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user module may raise anything at import
        raise error(f"importing module {module_name!r} for {what} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise error(f"module {module_name!r} has no attribute {attr!r} ({what})")
    return obj


def _import(module_name: str):
    import os
    import sys
    import threading

    if module_name in sys.modules or module_name.split(".")[0] in OWN_PACKAGES:
        return importlib.import_module(module_name)
    timeout = float(os.environ.get("RLREASON_IMPORT_TIMEOUT_S", IMPORT_TIMEOUT_S))
    out: dict = {}

    def target():
        try:
            out["module"] = importlib.import_module(module_name)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    thread = threading.Thread(target=target, name=f"import {module_name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"importing module {module_name!r} did not finish within {timeout:.0f} s (does it wait on the "
                           f"network, a lock or input at import time?); set RLREASON_IMPORT_TIMEOUT_S to allow longer")
    if "error" in out:
        raise out["error"]
    return out["module"]
