"""``regprim explain --dry-run``: what :func:`regprim.explain` would do, without solving: the
resolved settings, the players on the grid, and memory and time estimates from the solver's own
pass model (:meth:`Solver.expected_passes`) and a measured pass through ``g``."""

from __future__ import annotations

import time
from typing import Any

import torch

from regprim.config import ExplainConfig
from regprim.explain import load_generator, resolved_config
from regprim.generator import SplitGenerator
from regprim.solvers import SOLVERS, Objective, expected_passes
from regprim.target import Target, build_target


def players_map(target: Target) -> str:
    """The grid as text: each player cell shows its bit index, other cells a dot."""
    grid = target.grid
    width = len(str(target.n - 1))
    rows = []
    for r in range(grid.rows):
        cells = []
        for c in range(grid.cols):
            cell = r * grid.cols + c
            bit = target.players.index(cell) if cell in target.players else None
            cells.append(("." if bit is None else str(bit)).rjust(width))
        rows.append(" ".join(cells))
    return "\n".join(rows)


def plan(cfg: ExplainConfig, generator: SplitGenerator | None = None) -> dict[str, Any]:
    """What :func:`explain` would do, without solving (``regprim explain --dry-run``): the
    resolved settings, the players on the grid, and memory and time estimates (the time from a
    measured pass of a chunk of subsets through ``g`` and the expected number of passes)."""
    gen = load_generator(cfg, generator)
    target = build_target(cfg, gen)
    numel = target.f.numel()
    memory = SOLVERS[cfg.solver.method].memory_bytes(target.n, numel)
    obj = Objective(target, cfg.solver)
    batch = max(1, min(cfg.solver.chunk or 32, 2**target.n - 1, 32))
    u = (obj.f0 + torch.rand(batch, *obj.df.shape) * obj.df).requires_grad_(True)
    start = time.perf_counter()
    for _ in range(2):
        torch.autograd.grad(gen.g(u, target.code).sum(), u)
    per_pass = (time.perf_counter() - start) / (2 * batch)
    passes = expected_passes(cfg.solver, target.n)
    return {
        "settings": resolved_config(cfg, target),
        "players": players_map(target),
        "memory_bytes": memory,
        "seconds_per_pass": per_pass,
        "expected_passes": passes,
        "estimated_solve_seconds": passes * per_pass,
    }
