"""``regprim explain --dry-run``: what :func:`regprim.explain` would do, without solving: the
resolved settings, the players on the grid, and the time and peak memory a run would take,
predicted from passes measured here.

Nothing is extrapolated from shapes alone. The target's feature and image are computed as the
run computes them (the split's check against the model's own output, a whole sampling of a
diffusion pipeline, is left to the run); the baseline is the cached one or a stand-in of one
code (its own time for all the codes is extrapolated from it); one pass of one feature and one
of two (forward and input gradient, whole; the second only for a pass under
``objective.SLOW_PASS`` seconds) give the seconds and bytes per feature and the fixed bytes
(:meth:`Objective.fit`). A cheap model is then measured
at the solve's own batch, with its receptive-field window (:meth:`Solver.seconds_per_pass`); a
model whose pass takes longer than ``CHEAP`` seconds is predicted from the pass of two features
instead, so that the dry run costs a few passes (a real-size diffusion model: minutes, not the
run's hours).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from regprim.config import ExplainConfig
from regprim.generators.base import SplitGenerator
from regprim.pipeline.explain import StageClock, load_generator, resolved_config
from regprim.solvers import SOLVERS, Objective, expected_passes
from regprim.solvers.or_objective import singles_per_step
from regprim.solvers.problem.baseline import cached, compute_baseline
from regprim.solvers.problem.reach import POINTS
from regprim.solvers.problem.target import Target, build_target
from regprim.storage import run_folder as rf

CHEAP = 0.5  # seconds of a pass of two features below which the solve's own batch is timed
STAND_IN = 1  # codes of the stand-in baseline
RECOMPUTE = 4 / 3  # a checkpointed micro-batch runs its forward twice: about 4/3 of a pass


def players_map(target: Target) -> str:
    """The grid as text: each player cell shows its grid id (the id every list uses), other
    cells a dot; then the players in bit order (what a bitmask's bits mean)."""
    grid = target.grid
    width = len(str(grid.rows * grid.cols - 1))
    rows = [
        " ".join(
            (str(cell) if cell in target.players else ".").rjust(width)
            for cell in range(r * grid.cols, (r + 1) * grid.cols)
        )
        for r in range(grid.rows)
    ]
    return "\n".join([*rows, f"bit order (bit i = player i): {target.players}"])


def _baseline(cfg: ExplainConfig, gen: SplitGenerator) -> tuple[torch.Tensor, float]:
    """The cached baseline (0 s to come), or a stand-in of ``STAND_IN`` codes and the seconds
    the run's baseline of ``baseline_count`` codes will take (timed on the stand-in)."""
    found = cached(gen, cfg.baseline_count, cfg.baseline_seed)
    if found is not None:
        return found, 0.0
    count = min(STAND_IN, cfg.baseline_count)
    start = time.perf_counter()
    f0 = compute_baseline(gen, count, cfg.baseline_seed, batch=count)
    return f0, (time.perf_counter() - start) * cfg.baseline_count / count


def plan(cfg: ExplainConfig, generator: SplitGenerator | None = None) -> dict[str, Any]:
    """What :func:`explain` would do, without solving (module docstring)."""
    clock = StageClock(progress=False)
    with clock("load"):
        gen = load_generator(cfg, generator)
    with clock("baseline stand-in"), torch.no_grad():
        f0, baseline_seconds = _baseline(cfg, gen)
    with clock("target"):
        target = build_target(cfg, gen, f0=f0, check=False)
    solver = SOLVERS[cfg.solver.method]
    budget = None if cfg.memory_budget_gb is None else int(cfg.memory_budget_gb * 2**30)
    n = target.n
    batch = min(cfg.solver.or_batch, 2**n - 1) + singles_per_step(n, cfg.solver.or_batch)
    with clock("passes"):
        probe = Objective(target, cfg.solver, budget, probe=False)
    fit = probe.pass_bytes
    micro = min(probe.micro or batch, batch)
    passes = expected_passes(cfg.solver, n) + POINTS * n  # the solve and its reach probe
    if fit["seconds_two"] < CHEAP:
        with clock("passes"):
            per_pass = solver.seconds_per_pass(Objective(target, cfg.solver, budget))
        how = f"timed at the solve's batch of {batch} features"
    else:
        per_pass = fit["seconds_two"] / 2 * (RECOMPUTE if micro < batch else 1.0)
        how = "from a pass of two features"
    solver_bytes = solver.memory_bytes(n, target.f.numel())
    memory = fit["held_bytes"] + fit["fixed_bytes"] + micro * fit["bytes_per_feature"]
    return {
        "settings": resolved_config(cfg, target),
        "players": players_map(target),
        "g_runs": gen.cost() or f"the layers of {gen.name} after {gen.layer}",
        "memory_bytes": int(memory + solver_bytes),
        "solver_memory_bytes": solver_bytes,
        "held_bytes": int(fit["held_bytes"]),
        "bytes_per_feature": int(fit["bytes_per_feature"]),
        "micro_batch": micro,
        "batch": batch,
        "seconds_per_pass": per_pass,
        "timed": how,
        "expected_passes": passes,
        "estimated_solve_seconds": passes * per_pass,
        "baseline_seconds": baseline_seconds,
        "measured_exactly": bool(fit["exact"]),
        "plan_seconds": dict(clock.seconds),
        "run_bytes": rf.run_bytes(n, target.f.numel(), cfg.denoise, cfg.storage),
        "run_bytes_light": rf.run_bytes(n, target.f.numel(), storage="light"),
    }
