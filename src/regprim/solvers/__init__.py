"""Minimal-feature solvers behind one small protocol, above the problem they solve.

The problem (:mod:`regprim.solvers.problem`) is one floor below: the target and its baseline,
and the :class:`Objective`, the game a solver plays (alphas in, images and masked errors out).
A solver turns an :class:`Objective` (one target and its solver settings) into
:class:`~regprim.solvers.base.DenseResult` (every subset stored) or
:class:`~regprim.solvers.base.CompactResult` (the whole grid) with per-subset diagnostics
(:mod:`regprim.solvers.base`), whose OR components Eq. 10 makes in one place
(:func:`regprim.solvers.components.or_components`). Each solver lives in its own module and is
chosen by ``SolverConfig.method``:

- ``or`` (:mod:`regprim.solvers.or_structured`): OR-structured minimal features, one set of
  unknowns per player for all subsets (the default);
- ``paper`` (:mod:`regprim.solvers.paper`): every subset solved alone, as the paper does;
- ``reach`` (:mod:`regprim.solvers.or_structured`): the receptive-field reference.

To add one: a class (the :class:`~regprim.solvers.base.Solver` protocol) with ``name``,
``settings``, ``memory_bytes(n, numel)``,
``expected_passes(cfg, n)`` and ``seconds_per_pass(objective)`` (together, ``--dry-run``'s time),
``convergence_note(cfg, summary)`` and ``solve(objective, resume, on_chunk, progress) ->
MinimalFeatures``, registered in ``SOLVERS`` and named in ``regprim.config.SOLVER_METHODS``
(``tests/test_solvers.py`` checks every registered solver on the planted generator).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from regprim.config import SolverConfig
from regprim.solvers.base import CompactResult, DenseResult, MinimalFeatures, Solver
from regprim.solvers.components import or_components
from regprim.solvers.or_structured import ORSolver, ReachSolver
from regprim.solvers.paper import PaperSolver
from regprim.solvers.problem.memory import available_bytes
from regprim.solvers.problem.objective import Objective
from regprim.solvers.problem.target import Target

SOLVERS: dict[str, Solver] = {s.name: s for s in (ORSolver(), PaperSolver(), ReachSolver())}


def check_memory(cfg: SolverConfig, n: int, numel: int, budget_gb: float | None) -> None:
    """Refuse a solve whose tensors would not fit in memory (with the estimate)."""
    need = SOLVERS[cfg.method].memory_bytes(n, numel)
    have = budget_bytes(budget_gb, torch.device("cpu"))
    if need > have:
        msg = (
            f"n={n} needs about {need / 2**30:.1f} GiB for its 2**{n} x {numel} tensors, "
            f"more than the {have / 2**30:.1f} GiB available; use a smaller n "
            f"(each player fewer halves it) or an earlier, smaller layer"
        )
        raise MemoryError(msg)


def convergence_note(cfg: SolverConfig, summary: dict) -> str | None:
    """What a user should know when a solve stopped before its convergence test held (each
    solver words its own)."""
    if summary["subsets_converged"] == 1.0:
        return None
    return SOLVERS[cfg.method].convergence_note(cfg, summary)


def expected_passes(cfg: SolverConfig, n: int) -> float:
    """Generator passes (forward and input gradient) the solve of n players is expected to
    take, by the solver's own pass model."""
    return SOLVERS[cfg.method].expected_passes(cfg, n)


def budget_bytes(budget_gb: float | None, device: torch.device) -> int:
    """A memory budget in bytes: the one given, else what the machine has free."""
    return int(budget_gb * 2**30) if budget_gb is not None else available_bytes(device)


def solve(
    target: Target,
    cfg: SolverConfig,
    resume: dict[str, Tensor] | None = None,
    on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
    progress: bool = True,
    memory_budget_gb: float | None = None,
) -> MinimalFeatures:
    """The minimal features of ``target`` by ``cfg.method`` (their components: Eq. 10,
    :func:`or_components`); the generator's passes in micro-batches that fit in
    ``memory_budget_gb`` (None: the machine's free memory)."""
    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    obj = Objective(target, cfg, budget)
    return SOLVERS[cfg.method].solve(obj, resume, on_chunk, progress)


__all__ = [
    "SOLVERS",
    "CompactResult",
    "DenseResult",
    "MinimalFeatures",
    "Objective",
    "Solver",
    "check_memory",
    "convergence_note",
    "expected_passes",
    "or_components",
    "solve",
]
