"""A post-import hook: run a function on a module right after it executes, whoever imports it.

This is how the adapter patches transformers and torch without importing them itself: a
program that never imports a module never pays for its patch.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from typing import Any


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs a hook on a module right after it has executed, whoever imports it."""

    def __init__(self, hooks: dict[str, Callable[[Any], None]], guard: Callable[..., Any]) -> None:
        self.hooks, self.guard = hooks, guard  # guard(hook, module) runs the hook without letting it raise
        self._looking: set[str] = set()  # names this finder is asking the others about

    def find_spec(self, fullname, path, target=None):
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._looking:
            return None  # another finder of this kind asking back: each wraps the loader once
        self._looking.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._looking.discard(fullname)
        if spec.loader is None:
            return spec
        del self.hooks[fullname]
        spec.loader = _HookedLoader(spec.loader, hook, self.guard)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hook, guard) -> None:
        self._loader, self._hook, self._guard = loader, hook, guard

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._guard(self._hook, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)
