"""Running a module from a cut inside it: what precedes the cut is computed once and replayed.

A module's forward calls its *units* in order: its direct children and the members of its
``ModuleList``/``ModuleDict`` children (``conv_in``, ``down_blocks.0``, ``mid_block``,
``up_blocks.1``, ``transformer_blocks.3``, ...). Cut at a unit, :meth:`Stages.capture` runs the
forward until the cut unit has returned (and stops there) and records the output of every unit
called before it; :meth:`Stages.resume` runs the forward again with each of those units
answering its recorded output (expanded to the batch) and the cut unit answering the feature, so
that only what follows the cut computes. Outputs of earlier units that later ones consume (a
U-Net's skip tensors, its timestep embedding) are thereby held at the recorded values: the
caller states that as part of its split (docs/models.md). Units are swapped by an instance
attribute ``forward`` that is always removed again, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside the forward once the cut unit has returned: nothing after it runs."""

    def __init__(self, output: object) -> None:
        self.output = output


def units(module: nn.Module) -> dict[str, nn.Module]:
    """The units of ``module``'s forward: direct children, and the members of its module lists
    and dicts, by dotted name, in registration order."""
    found: dict[str, nn.Module] = {}
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            found |= {f"{name}.{k}": m for k, m in child.named_children()}
        else:
            found[name] = child
    return found


def expand(value: Any, batch: int, repeat: int) -> Any:
    """``value`` recorded for ``batch`` items, each repeated ``repeat`` times along the first
    axis (tensors whose first axis is not the batch, and non-tensors, unchanged)."""
    if isinstance(value, Tensor):
        if value.dim() and value.shape[0] == batch and repeat != 1:
            return value.repeat_interleave(repeat, dim=0)
        return value
    if isinstance(value, tuple | list):
        return type(value)(expand(v, batch, repeat) for v in value)
    return value


@contextmanager
def _swapped(replies: dict[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Each module answers by its reply instead of its forward, inside the block."""
    try:
        for module, reply in replies.items():
            module.forward = reply  # type: ignore[method-assign]
        yield
    finally:
        for module in replies:
            module.__dict__.pop("forward", None)


class Stages:
    """A cut at unit ``cut`` of ``module`` (one of :func:`units`); ``output_index`` picks the
    feature inside a unit that returns a tuple (the other entries are held, as earlier units'
    outputs are)."""

    def __init__(self, module: nn.Module, cut: str, output_index: int | None = None) -> None:
        self.units = units(module)
        if cut not in self.units:
            msg = f"no block {cut!r} in {type(module).__name__}; blocks: {list(self.units)}"
            raise ValueError(msg)
        self.module, self.cut, self.output_index = module, cut, output_index
        self.names = {m: n for n, m in self.units.items()}

    def feature_of(self, output: object) -> Tensor:
        """The feature inside the cut unit's output."""
        if self.output_index is None:
            if isinstance(output, Tensor):
                return output
            return output[0]  # type: ignore[index]
        return output[self.output_index]  # type: ignore[index]

    def capture(self, run: Callable[[], object]) -> tuple[object, list[tuple[str, object]]]:
        """Run ``run()`` (which calls ``module``) up to the cut: the cut unit's output and the
        ``(unit, output)`` of every unit call before it, in call order. A forward that never
        calls the cut unit is an error."""
        calls: list[tuple[str, object]] = []
        cut = self.units[self.cut]

        def record(module: nn.Module, _inputs: object, output: object) -> None:
            if module is cut:
                raise _Reached(output)
            calls.append((self.names[module], output))

        handles = [m.register_forward_hook(record) for m in self.units.values()]
        try:
            run()
        except _Reached as reached:
            return reached.output, calls
        finally:
            for h in handles:
                h.remove()
        msg = f"the forward never called block {self.cut!r}; check the cut"
        raise RuntimeError(msg)

    def resume(
        self,
        run: Callable[[], Tensor],
        calls: list[tuple[str, object]],
        cut_output: object,
        feature: Tensor,
        batch: int,
        repeat: int,
    ) -> Tensor:
        """Run ``run()`` again from the cut: each recorded unit call answers its output
        (recorded for ``batch`` items, each repeated ``repeat`` times), the cut unit answers
        ``feature`` (in its output's place, the rest of that output held)."""
        queues: dict[str, list[object]] = {}
        for name, output in calls:
            queues.setdefault(name, []).append(expand(output, batch, repeat))

        def replay(name: str) -> Callable[..., object]:
            def reply(*_args: object, **_kwargs: object) -> object:
                return queues[name].pop(0)

            return reply

        held = expand(cut_output, batch, repeat)

        def at_cut(*_args: object, **_kwargs: object) -> object:
            if isinstance(held, Tensor):
                return feature
            parts = list(held)  # type: ignore[arg-type]
            parts[0 if self.output_index is None else self.output_index] = feature
            return type(held)(parts)  # type: ignore[call-arg]

        replies = {self.units[name]: replay(name) for name in queues}
        replies[self.units[self.cut]] = at_cut
        with _swapped(replies):
            return run()


def leaves(value: Any) -> list[Tensor]:
    """The tensors inside a (nested) output, in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in leaves(v)]
    return []


def rebuild(value: Any, new: Iterator[Tensor]) -> Any:
    """``value`` with its tensors replaced, in order, by those of ``new``."""
    if isinstance(value, Tensor):
        return next(new)
    if isinstance(value, tuple | list):
        return type(value)(rebuild(v, new) for v in value)
    return value


def pack_state(values: list[Any], batch: int) -> Tensor:
    """Every tensor of ``values`` as one flat feature per item ``(batch, D)``: a tensor whose
    first axis holds ``m * batch`` rows (``m`` passes of the batch, one after the other, as
    guidance stacks them) gives each item its ``m`` rows."""
    parts = []
    for t in (t for v in values for t in leaves(v)):
        passes = t.shape[0] // batch
        parts.append(t.reshape(passes, batch, -1).transpose(0, 1).reshape(batch, -1))
    return torch.cat(parts, dim=1)


def unpack_state(f: Tensor, like: list[Any], like_batch: int) -> list[Any]:
    """The inverse of :func:`pack_state` for features ``f`` ``(B, D)``, shaped as ``like``
    (packed from ``like_batch`` items)."""
    batch, start, new = len(f), 0, []
    for t in (t for v in like for t in leaves(v)):
        passes = t.shape[0] // like_batch
        size = t[:passes].numel()
        part = f[:, start : start + size].reshape(batch, passes, -1).transpose(0, 1)
        new.append(part.reshape(passes * batch, *t.shape[1:]))
        start += size
    it = iter(new)
    return [rebuild(v, it) for v in like]
