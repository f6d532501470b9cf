"""Strategies by name. The supervisor looks rungs up here and never imports a concrete strategy.

Built-in strategies register on import of the `strategies` package; third-party ones can join
through the `oomladder.strategies` entry-point group (value: `module:Class`).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from oomladder.errors import StrategyError
from oomladder.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}
_entry_points_loaded = False


def register(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two strategies named '{cls.name}'")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Strategy]:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise StrategyError(f"unknown strategy '{name}' (known: {', '.join(available())})") from None


def available() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="oomladder.strategies"):
        register(ep.load())
