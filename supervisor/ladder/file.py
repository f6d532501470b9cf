"""Ladders as files: the YAML a person writes (configs/default.yaml is the default), and the ladder
a run recorded in its journal, which a resumed run walks whatever the file says now."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from oomladder import strategies
from oomladder.errors import LadderFileError, StrategyError
from oomladder.ladder.rungs import Ladder, Rung

LADDER_VERSION = 1
DEFAULT_LADDER = "default.yaml"


def load_ladder(path: str | Path | None = None) -> Ladder:
    """The ladder in `path`, or the default one shipped with oomladder."""
    if path is None:
        return parse_ladder(default_ladder_text(), f"default ladder ({DEFAULT_LADDER})")
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise LadderFileError(f"ladder file '{path}' does not exist: give the path of a YAML ladder "
                              f"(see configs/default.yaml) or leave out --ladder to use the default")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LadderFileError(f"ladder file '{path}' cannot be read ({exc}): check its permissions and "
                              f"encoding") from None
    return parse_ladder(text, str(path))


def ladder_from_journal(data: dict[str, Any]) -> Ladder:
    """The ladder a run recorded in its journal: a resumed run walks the same one, whatever the file says now."""
    rungs = [{r["name"]: {**r.get("params", {}), **({"times": r["times"]} if r.get("times") else {})}}
             for r in data.get("rungs", [])]
    return parse_ladder(yaml.safe_dump({"version": LADDER_VERSION, "rungs": rungs}), data.get("source", "journal"))


def default_ladder_text() -> str:
    """configs/default.yaml, shipped as the package `oomladder.configs`."""
    return resources.files("oomladder.configs").joinpath(DEFAULT_LADDER).read_text()


def parse_ladder(text: str, source: str) -> Ladder:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        # A character YAML does not allow (a reader error) has a reason but no problem or line.
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "not valid YAML"
        raise LadderFileError(f"ladder file '{source}' is not valid YAML{at} ({problem}): fix it, "
                              f"or compare with configs/default.yaml") from None
    if isinstance(data, dict) and set(data) - {"version", "rungs", "description"}:
        unknown = sorted(map(str, set(data) - {"version", "rungs", "description"}))
        raise LadderFileError(f"ladder file '{source}' has unknown keys {unknown}: only 'version', "
                              f"'description' and 'rungs' are read")
    if not isinstance(data, dict) or not isinstance(data.get("rungs"), list) or not data["rungs"]:
        raise LadderFileError(f"ladder file '{source}' needs a non-empty 'rungs:' list of strategy names "
                              f"(see configs/default.yaml)")
    version = data.get("version", LADDER_VERSION)
    if version != LADDER_VERSION:
        raise LadderFileError(f"ladder file '{source}' is version {version!r}; this oomladder reads version "
                              f"{LADDER_VERSION}")
    return Ladder(tuple(_parse_rung(i, entry, source) for i, entry in enumerate(data["rungs"])), source)


def _parse_rung(index: int, entry: Any, source: str) -> Rung:
    where = f"rung {index + 1} of ladder file '{source}'"
    params: Any
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        (name, params), = entry.items()
        params = params or {}
        if not isinstance(params, dict):
            raise LadderFileError(f"{where}: the parameters of '{name}' must be a mapping like "
                                  f"{{min_batch: 2}}, not {params!r}")
    else:
        raise LadderFileError(f"{where} must be a strategy name or 'name: {{param: value}}', not {entry!r}")
    params = dict(params)
    times = params.pop("times", None)
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise LadderFileError(f"{where}: 'times' must be a whole number of 1 or more, not {times!r}")
    try:
        strategy = strategies.get(str(name))(**params)
    except StrategyError as exc:
        raise StrategyError(f"{where}: {exc}") from None
    if times is None and not strategy.repeatable:
        times = 1
    return Rung(index, strategy, times)
