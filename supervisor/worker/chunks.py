"""How a step's inputs split into chunks of their rows, for in-place recovery (inplace.py): the batch's rows and
sequence length, consecutive rows along the first dimension of every tensor that has them, and each chunk without
the padding columns none of its rows use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def seq_len(inputs: Any) -> int | None:
    """The sequence length of a step's inputs (input_ids' second dimension), or None."""
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
    return int(ids.shape[1]) if getattr(ids, "dim", lambda: 0)() >= 2 else None


def chunks(inputs: Mapping[str, Any], rows: int, parts: int) -> list[dict[str, Any]]:
    """`inputs` in `parts` chunks of consecutive rows along dim 0 of each tensor that has the batch's rows;
    other values (flags, scalars) go to every chunk as they are. Each chunk drops the padding columns at its
    end that none of its own rows use (`trim`)."""
    import torch
    bounds = [len(r) for r in torch.arange(rows).tensor_split(parts)]
    out, start = [], 0
    for size in bounds:
        piece = {}
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == rows:
                piece[key] = value[start:start + size]
            else:
                piece[key] = value
        out.append(trim(piece))
        start += size
    return out


def trim(piece: dict[str, Any]) -> dict[str, Any]:
    """The chunk without the trailing columns its attention mask leaves out in every row: a batch padded to its
    longest row pads a chunk of short rows as far. Those positions are masked and labelled -100, so the loss
    and the gradients are the same (the padding comes last; a left-padded chunk has none to drop), and a chunk
    costs what a micro-batch of its rows would."""
    mask = piece.get("attention_mask")
    if mask is None or getattr(mask, "dim", lambda: 0)() != 2 or mask.shape[1] == 0:
        return piece
    width = mask.shape[1]
    used = mask.ne(0).any(dim=0).nonzero()
    keep = int(used[-1]) + 1 if used.numel() else width
    if keep == width:
        return piece
    import torch
    return {key: value[:, :keep] if torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == width else value
            for key, value in piece.items()}


def batch_rows(inputs: Any) -> tuple[int | None, str | None]:
    """The rows of a step's inputs, or None with why no batch dimension can be found."""
    import torch
    if not isinstance(inputs, Mapping):
        return None, f"the step's inputs are a {type(inputs).__name__}, not a mapping of tensors"
    tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.dim() >= 1}
    if not tensors:
        return None, "no batch dimension found: the step's inputs hold no tensor"
    first = inputs.get("input_ids")
    rows = int(first.shape[0]) if torch.is_tensor(first) and first.dim() >= 1 else int(next(iter(tensors.values())).shape[0])
    other = sorted(k for k, v in tensors.items() if int(v.shape[0]) != rows)
    if other:
        return None, (f"no batch dimension found: {', '.join(other)} do{'es' if len(other) == 1 else ''} not share "
                      f"the first dimension ({rows}) of the other inputs")
    return rows, None
