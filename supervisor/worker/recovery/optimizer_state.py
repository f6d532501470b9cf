"""Adam's moments across a change of optimizer: a run resumed after `optimizer_8bit` carries them over.

The emergency checkpoint of the attempt that ran out of memory holds PyTorch AdamW's state (`exp_avg`,
`exp_avg_sq` in fp32); the next attempt trains with bitsandbytes' 8-bit AdamW, whose state is the same
two moments quantized blockwise (`state1`, `state2`, with their code books and block maxima). Loading
one into the other as it is would fail at the first step, and starting the moments from zero would be a
warm restart in the middle of the schedule. So the moments are quantized into the 8-bit state, with the
step count kept: the next step is what 8-bit AdamW would have done had it held these moments. A rung
that is rolled back goes the other way: the 8-bit moments are dequantized into fp32 ones.

Only the two layouts are converted; any other mismatch is left to the optimizer's own `load_state_dict`.
"""

from __future__ import annotations

import sys
from itertools import chain
from typing import Any

_BLOCKSIZE = 256  # bitsandbytes' Optimizer2State quantizes its 8-bit states in blocks of 256
_WRAPPED = "__bnb_optimizer_quant_state__"  # where bitsandbytes' state_dict tucks state1, qmap1, absmax1...


def is_8bit(optimizer: Any) -> bool:
    return type(optimizer).__module__.startswith("bitsandbytes.") and hasattr(optimizer, "init_state")


def layout(state_dict: dict[str, Any]) -> str | None:
    """"torch" (exp_avg/exp_avg_sq), "bnb" (state1/state2), or None (empty, or something else)."""
    for param_state in state_dict.get("state", {}).values():
        param_state = _unwrapped(param_state)
        if "exp_avg" in param_state and "exp_avg_sq" in param_state:
            return "torch"
        if "state1" in param_state and "state2" in param_state:
            return "bnb"
    return None


def load(optimizer: Any, state_dict: dict[str, Any], original_load) -> None:
    """`optimizer.load_state_dict(state_dict)`, converting Adam's moments between the two layouts first."""
    saved = layout(state_dict)
    if saved == "torch" and is_8bit(optimizer):
        _into_8bit(optimizer, state_dict)
        print("oomladder: Adam's moments from the checkpoint are carried over into 8-bit AdamW (quantized)",
              file=sys.stderr, flush=True)
    elif saved == "bnb" and not is_8bit(optimizer):
        original_load(_from_8bit(state_dict))
        print("oomladder: 8-bit AdamW's moments from the checkpoint are carried over into this optimizer",
              file=sys.stderr, flush=True)
    else:
        original_load(state_dict)


def _pairs(optimizer: Any, state_dict: dict[str, Any]):
    """(group index, param index, group, param, saved state) for every saved parameter, in order."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError("the checkpoint's optimizer has a different number of parameter groups")
    for gindex, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError("the checkpoint's optimizer groups hold different parameters")
        for key, value in saved.items():
            if key != "params" and key in group and not key.startswith("betas"):
                group[key] = value  # lr, initial_lr, weight decay: the schedule's place
        for pindex, (param, saved_id) in enumerate(zip(group["params"], saved["params"])):
            yield gindex, pindex, group, param, state_dict["state"].pop(saved_id, None)


def _into_8bit(optimizer: Any, state_dict: dict[str, Any]) -> None:
    import torch
    from bitsandbytes import functional as F
    with torch.no_grad():
        for gindex, pindex, group, param, saved in _pairs(optimizer, state_dict):
            if not saved:
                continue
            optimizer.init_state(group, param, gindex, pindex)
            state = optimizer.state[param]
            step = saved.get("step", 0)
            state["step"] = int(step.item() if hasattr(step, "item") else step)
            for moment, target, code, absmax in (("exp_avg", "state1", "qmap1", "absmax1"),
                                                 ("exp_avg_sq", "state2", "qmap2", "absmax2")):
                value = saved.pop(moment).to(param.device, torch.float32).contiguous()
                if state[target].dtype == torch.uint8:
                    F.quantize_blockwise(value, code=state[code], absmax=state[absmax], out=state[target],
                                         blocksize=_BLOCKSIZE)
                else:  # parameters under bitsandbytes' min_8bit_size keep 32-bit states
                    state[target].copy_(value.view_as(state[target]))
                del value  # one parameter's moments at a time: the fp32 state leaves memory as it goes


def _from_8bit(state_dict: dict[str, Any]) -> dict[str, Any]:
    import torch
    from bitsandbytes import functional as F
    out = {"param_groups": state_dict["param_groups"], "state": {}}
    ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    for saved_id in ids:
        saved = _unwrapped(state_dict["state"].get(saved_id) or {})
        if not saved:
            continue
        moments = []
        for target, code, absmax in (("state1", "qmap1", "absmax1"), ("state2", "qmap2", "absmax2")):
            value = saved[target]
            if value.dtype == torch.uint8:
                value = F.dequantize_blockwise(value, absmax=saved[absmax], code=saved[code], blocksize=_BLOCKSIZE)
            moments.append(value.to(torch.float32))
        out["state"][saved_id] = {"step": torch.tensor(float(saved.get("step", 0))), "exp_avg": moments[0],
                                  "exp_avg_sq": moments[1]}
    return out


def _unwrapped(param_state: dict[str, Any]) -> dict[str, Any]:
    if isinstance(param_state, dict) and _WRAPPED in param_state:
        return {**{k: v for k, v in param_state.items() if k != _WRAPPED}, **param_state[_WRAPPED]}
    return param_state
