"""How a step's inputs split into chunks of their rows, for in-place recovery (in_place.py): the batch's rows and
sequence length, consecutive rows along the first dimension of every tensor that has them, and each chunk without
the trailing columns that contribute nothing to any of its rows (no attention, no label).

A split is exact only where the rows are independent. Inputs that say otherwise (several sequences packed into a
row, told apart by `position_ids` or `cu_seq_lens_*`) are refused by `packed`, and the adapter relaunches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def seq_len(inputs: Any) -> int | None:
    """The sequence length of a step's inputs (input_ids' second dimension), or None."""
    ids: Any = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
    return int(ids.shape[1]) if getattr(ids, "dim", lambda: 0)() >= 2 else None


def chunks(inputs: Mapping[str, Any], rows: int, parts: int, labels_aligned: bool = True) -> list[dict[str, Any]]:
    """`inputs` in `parts` chunks of consecutive rows along dim 0 of each tensor that has the batch's rows;
    other values (flags, scalars) go to every chunk as they are. Each chunk drops the columns at its end that
    contribute nothing to its own rows (`trim`). `labels_aligned`: the labels run along the input's columns (a
    decoder-only model); an encoder-decoder's labels and decoder inputs are the decoder's, and are never cut."""
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
        out.append(trim(piece, labels_aligned))
        start += size
    return out


# Per-position tensors whose values are content, not a sign that the position counts: a position is kept for
# them only through the other tensors (its attention, its label).
CONTENT = frozenset({"input_ids", "token_type_ids", "position_ids"})
IGNORE_INDEX = -100  # the label that contributes no loss (PyTorch's cross-entropy default, Transformers' and TRL's)


def trim(piece: dict[str, Any], labels_aligned: bool = True) -> dict[str, Any]:
    """The chunk without its trailing columns that contribute nothing: masked out in every row of the chunk
    (`attention_mask` 0), labelled IGNORE_INDEX in every row, and 0 in every other per-position tensor (a
    completion or loss mask). A batch padded to its longest row pads a chunk of short rows as far, and a chunk
    then costs what a micro-batch of its rows would; the loss and the gradients are those of the untrimmed chunk.

    Nothing is dropped where that cannot be known: without an attention mask; where the padding carries labels
    (a collator that sets `labels = input_ids` on padded rows); left padding, which leaves no empty column at the
    end."""
    import torch
    mask = piece.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2 or mask.shape[1] == 0:
        return piece
    width = mask.shape[1]
    aligned = {key for key, value in piece.items()
               if torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == width
               and (labels_aligned or not (key == "labels" or key.startswith("decoder_")))}
    used = mask.ne(0).any(dim=0)
    for key in aligned - CONTENT - {"attention_mask"}:
        value = piece[key]
        if value.dim() != 2:
            continue  # several values per position (embeddings, pixels): content, as input_ids are
        empty = value.eq(IGNORE_INDEX) if "label" in key else value.eq(0)
        used |= ~empty.all(dim=0)
    found = used.nonzero()
    keep = int(found[-1]) + 1 if found.numel() else width
    if keep == width:
        return piece
    return {key: value[:, :keep] if key in aligned else value for key, value in piece.items()}


def packed(inputs: Any) -> str | None:
    """Why the rows of these inputs are not independent sequences, or None: padding-free batches (TRL's packing)
    hold several sequences in a row, told apart by `position_ids` that start again inside it, or by the
    cumulative lengths flash attention reads across the whole batch."""
    import torch
    if not isinstance(inputs, Mapping):
        return None
    if any(str(key).startswith("cu_seq_lens") for key in inputs):
        return "the batch is packed (padding-free: cu_seq_lens give the sequences' bounds across the whole batch)"
    positions = inputs.get("position_ids")
    if not torch.is_tensor(positions) or positions.dim() != 2 or positions.shape[1] < 2:
        return None
    restart = positions[:, 1:] <= positions[:, :-1]
    mask = inputs.get("attention_mask")
    if torch.is_tensor(mask) and mask.shape == positions.shape:
        restart &= mask[:, 1:].ne(0)  # padding may number its positions as it likes
    if bool(restart.any()):
        return "the batch packs several sequences into a row (its position_ids start again inside a row)"
    return None


def batch_rows(inputs: Any) -> tuple[int | None, str | None]:
    """The rows of a step's inputs, or None with why no batch dimension can be found."""
    import torch
    if not isinstance(inputs, Mapping):
        return None, f"the step's inputs are a {type(inputs).__name__}, not a mapping of tensors"
    tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.dim() >= 1}
    if not tensors:
        return None, "no batch dimension found: the step's inputs hold no tensor"
    first = inputs.get("input_ids")
    rows = (int(first.shape[0]) if torch.is_tensor(first) and first.dim() >= 1
            else int(next(iter(tensors.values())).shape[0]))
    other = sorted(k for k, v in tensors.items() if int(v.shape[0]) != rows)
    if other:
        return None, (f"no batch dimension found: {', '.join(other)} do{'es' if len(other) == 1 else ''} not share "
                      f"the first dimension ({rows}) of the other inputs")
    return rows, None
