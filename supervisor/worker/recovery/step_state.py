"""What a micro-step changes, kept so that a step that failed leaves no trace: its gradients and the RNG
(`Guard`), the buffers of modules in training mode (BatchNorm's running statistics and its counter, a rotary
embedding that rescales on a long sequence), and the numbers a trainer keeps of its own (token counts, lists of
per-micro-batch metrics).

In-place recovery (in_place.py) puts them back before it runs the step again, so a step that ran out of memory
and was retried counts once; the emergency checkpoint (emergency.py) puts the buffers back as the last finished
step left them, so it holds the model between two steps, not part-way into the failed one. A split step's metrics
are merged into one entry per micro-batch, as the unsplit step logs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oomladder.worker.state import STATE

BUFFER_LIMIT = 64 << 20  # bytes copied per snapshot; above it only the tensors' versions are kept, to tell a change
# Gradients are copied before each micro-step inside an accumulation cycle only when the trainable weights
# take at most this share of all weights (adapters), and at most this many bytes.
COPY_SHARE, COPY_LIMIT = 0.10, 1 << 30


class Guard:
    """The gradients, RNG state and what else the adapter keeps (buffers, counters) a micro-step began with, to put
    back before it runs again."""

    def __init__(self, params: list[Any], kept: list[Any] | None = None) -> None:
        import torch
        self.params, self.kept = params, kept or []
        self.rng = torch.random.get_rng_state()
        self.cuda_rng = (torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
                         else None)
        grads = [p.grad for p in params]
        self.why_not: str | None = None
        self.grads: list[Any] | None = None
        if any(g is not None for g in grads):
            if _cheap(params):
                self.grads = [None if g is None else g.detach().clone() for g in grads]
            else:
                held = sum(g.numel() * g.element_size() for g in grads if g is not None)
                self.why_not = (f"the OOM struck inside an accumulation cycle, whose gradients ({held >> 20} MiB, "
                                f"every weight trains) are too large to keep a copy of")
        else:
            self.grads = [None] * len(params)

    def restore(self) -> str | None:
        """Put it all back; None, or why something could not be (the step is then not retried)."""
        import torch
        for param, grad in zip(self.params, self.grads or ()):
            param.grad = None if grad is None else grad.clone()
        torch.random.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        return next((why for why in (kept.restore() for kept in self.kept) if why), None)


def _cheap(params: list[Any]) -> bool:
    key = id(params[0]) if params else 0
    trainable, total = STATE.trainable_sizes.get(key, (0, 0))
    return 0 < trainable <= min(COPY_SHARE * total, COPY_LIMIT)


def trainable(model) -> list[Any]:
    """The parameters that take gradients (computed once per model), noting their share of all weights."""
    cached = getattr(model, "_oomladder_trainable", None)
    if cached is not None:
        return cached
    params, total = [], 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.requires_grad:
            params.append(p)
    if params:
        STATE.trainable_sizes[id(params[0])] = (sum(p.numel() * p.element_size() for p in params), total)
    try:
        object.__setattr__(model, "_oomladder_trainable", params)
    except Exception:
        pass
    return params


class Buffers:
    """The buffers of the modules in training mode of `models`, as they are now."""

    def __init__(self, *models: Any, limit: int = BUFFER_LIMIT) -> None:
        self.kept: list[tuple[dict[str, Any], str, Any, int, Any]] = []
        self.copied = True
        size = 0
        for module in _modules(models):
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    self.kept.append((module._buffers, name, buffer, buffer._version, None))
                    size += buffer.numel() * buffer.element_size()
        if size > limit:
            self.copied = False  # too large to copy every step: a change is told, not undone
        else:
            self.kept = [(owner, name, buffer, version, buffer.detach().clone())
                         for owner, name, buffer, version, _ in self.kept]

    def changed(self) -> list[str]:
        """The buffers a forward has written to (or replaced) since the snapshot."""
        return [name for owner, name, kept, version, _ in self.kept
                if kept._version != version or owner.get(name) is not kept]

    def restore(self) -> str | None:
        """Put every buffer back as it was; None when done, or why it could not be."""
        import torch
        if not self.copied:
            changed = self.changed()
            return None if not changed else (
                f"the failed forward changed the model's buffers ({', '.join(sorted(set(changed))[:3])}), too large "
                f"to keep a copy of each step")
        with torch.no_grad():
            for owner, name, buffer, _, copy in self.kept:
                owner[name] = buffer  # a module that assigned a new tensor: the one it had is still ours
                buffer.copy_(copy)  # always: a kernel's in-place write need not move the tensor's version
        return None


def _modules(models: Iterable[Any]) -> list[Any]:
    seen, out = set(), []
    for model in models:
        if model is None or not hasattr(model, "modules"):
            continue
        for module in model.modules():
            if module.training and module._buffers and id(module) not in seen:
                seen.add(id(module))
                out.append(module)
    return out


def coupled_rows(model: Any) -> str | None:
    """Why the rows of a micro-batch are not independent in this model's forward, or None: batch normalization in
    training mode normalizes each row by statistics of all of them, so a split changes every row's output."""
    import torch
    cached = getattr(model, "_oomladder_batch_norms", None)
    if cached is None:
        cached = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        try:
            object.__setattr__(model, "_oomladder_batch_norms", cached)
        except Exception:
            pass
    training = sorted({type(m).__name__ for m in cached if m.training or not m.track_running_stats})
    if not training:
        return None
    return (f"the model's {', '.join(training)} layers normalize over the micro-batch in training mode: its rows "
            f"are not independent, so a split would change every row's output")


class Counters:
    """The numbers an object keeps of its own (a trainer's token count, its lists of metrics per micro-batch), as
    they are now. Plain numbers, and lists of numbers in dicts of dicts (TRL's `_metrics[mode][name]`)."""

    def __init__(self, *owners: Any) -> None:
        self.numbers: list[tuple[Any, str, Any]] = []
        self.lists: list[tuple[dict[str, Any], str, list[Any]]] = []
        self.keys: list[tuple[dict[str, Any], set[str]]] = []
        for owner in owners:
            for name, value in _attributes(owner):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.numbers.append((owner, name, value))
                elif isinstance(value, dict):
                    for inner in value.values():
                        if isinstance(inner, dict):
                            self.keys.append((inner, set(inner)))
                            self.lists += [(inner, key, list(entries)) for key, entries in inner.items()
                                           if isinstance(entries, list)]

    def restore(self) -> None:
        for owner, name, value in self.numbers:
            if getattr(owner, name, None) != value:
                setattr(owner, name, value)
        for inner, keys in self.keys:
            for key in set(inner) - keys:
                del inner[key]  # a metric the failed try began
        for inner, key, entries in self.lists:
            inner[key] = list(entries)

    def merge(self, weights: list[float]) -> None:
        """After a split into len(weights) chunks that each appended one entry to a list of metrics: one entry, the
        chunks' mean weighted by their share of the step (each chunk's metric is a mean over its own tokens)."""
        parts = len(weights)
        for inner, key, entries in self.lists:
            now = inner.get(key)
            if not isinstance(now, list) or len(now) != len(entries) + parts or now[:len(entries)] != entries:
                continue
            added = now[len(entries):]
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in added):
                inner[key] = [*entries, sum(w * x for w, x in zip(weights, added))]
        for inner, keys in self.keys:
            for key in set(inner) - keys:
                added = inner[key]
                if (isinstance(added, list) and len(added) == parts
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in added)):
                    inner[key] = [sum(w * x for w, x in zip(weights, added))]


def _attributes(owner: Any) -> list[tuple[str, Any]]:
    try:
        return list(vars(owner).items())
    except TypeError:
        return []
