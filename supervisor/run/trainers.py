"""Which process of an attempt trained, as the supervisor reads the claims its processes left (worker/protocol/role.py):
what the journal keeps of it, and whether it died when the command says all went well. Pure."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any


def died_below_a_wrapper(record: dict[str, Any] | None, claims: list[dict[str, Any]]) -> bool:
    """A training process that a launcher started died of an exception, whatever the command's exit status says: a
    wrapper such as `bash -c "accelerate launch train.py; echo done"` exits 0 after its rank's OOM."""
    return record is not None and any(c.get("pid") == record.get("pid") and c.get("launchers") for c in claims)


def trains_in(claims: list[dict[str, Any]], command: Sequence[str]) -> dict[str, Any]:
    """What the journal keeps of the first of `claims` when a launcher started it (worker/protocol/role.py): its command
    line, and the notebook a command line names (papermill's, nbconvert's). Nothing when the command itself trains."""
    claim = claims[0] if claims else {}
    argv, launchers = claim.get("argv") or [], claim.get("launchers") or []
    if not launchers:
        return {}
    notebook = next((part for line in (command, *launchers, argv) for part in line if part.endswith(".ipynb")), None)
    kernel = any("ipykernel" in part for part in argv[:3])  # its command line is a connection file: say what it is
    return {"trains_in": "a Jupyter kernel (ipykernel)" if kernel else shlex.join(argv), "notebook": notebook}
