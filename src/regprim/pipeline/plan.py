"""``regprim explain --dry-run``: what :func:`regprim.explain` would do, without solving: the
resolved settings, the players on the grid, and memory and time estimates from the solver's own
pass model (:meth:`Solver.expected_passes`) and a measured pass through ``g``."""

from __future__ import annotations

from typing import Any

from regprim.config import ExplainConfig
from regprim.explanation.target import Target, build_target
from regprim.generators.base import SplitGenerator
from regprim.pipeline.explain import load_generator, resolved_config
from regprim.solvers import SOLVERS, Objective, expected_passes


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
    resolved settings, the players on the grid, and memory and time estimates (the solver's
    expected passes times the seconds of one pass, as the solver measures it here)."""
    gen = load_generator(cfg, generator)
    target = build_target(cfg, gen)
    numel = target.f.numel()
    memory = SOLVERS[cfg.solver.method].memory_bytes(target.n, numel)
    obj = Objective(target, cfg.solver)
    per_pass = SOLVERS[cfg.solver.method].seconds_per_pass(obj)
    passes = expected_passes(cfg.solver, target.n)
    return {
        "settings": resolved_config(cfg, target),
        "players": players_map(target),
        "g_runs": gen.cost() or f"the layers of {gen.name} after {gen.layer}",
        "memory_bytes": memory,
        "seconds_per_pass": per_pass,
        "expected_passes": passes,
        "estimated_solve_seconds": passes * per_pass,
    }
