"""Minimal-feature solvers behind one small protocol.

A solver turns an :class:`Objective` (one target and its solver settings) into
:class:`MinimalFeatures` with per-subset diagnostics. Each lives in its own module and is chosen
by ``SolverConfig.method``:

- ``paper`` (:mod:`regprim.solvers.paper`): every subset solved alone, as the paper does.

To add one: a class with ``name``, ``memory_bytes(n, numel)`` and
``solve(objective, resume, on_chunk, progress) -> MinimalFeatures``, registered in ``SOLVERS``
and named in ``regprim.config.SOLVER_METHODS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import Tensor

from regprim.config import SolverConfig
from regprim.solvers.objective import MinimalFeatures, Objective
from regprim.solvers.paper import PaperSolver
from regprim.target import Target


class Solver(Protocol):
    name: str

    def memory_bytes(self, n: int, numel: int) -> int: ...

    def solve(
        self,
        obj: Objective,
        resume: dict[str, Tensor] | None,
        on_chunk: Callable[[dict[str, Tensor]], None] | None,
        progress: bool,
    ) -> MinimalFeatures: ...


SOLVERS: dict[str, Solver] = {s.name: s for s in (PaperSolver(),)}


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (physical memory where that is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: SolverConfig, n: int, numel: int, budget_gb: float | None) -> None:
    """Refuse a solve whose tensors would not fit in memory (with the estimate)."""
    need = SOLVERS[cfg.method].memory_bytes(n, numel)
    have = int(budget_gb * 2**30) if budget_gb else available_memory_bytes()
    if need > have:
        msg = (
            f"n={n} needs about {need / 2**30:.1f} GiB for its 2**{n} x {numel} tensors, "
            f"more than the {have / 2**30:.1f} GiB available; use a smaller n "
            f"(each player fewer halves it) or an earlier, smaller layer"
        )
        raise MemoryError(msg)


def solve(
    target: Target,
    cfg: SolverConfig,
    resume: dict[str, Tensor] | None = None,
    on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
    progress: bool = True,
) -> MinimalFeatures:
    """The minimal features of ``target`` by ``cfg.method``."""
    return SOLVERS[cfg.method].solve(Objective(target, cfg), resume, on_chunk, progress)


__all__ = ["SOLVERS", "MinimalFeatures", "Objective", "Solver", "check_memory", "solve"]
