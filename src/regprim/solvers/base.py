"""What every solver is (:class:`Solver`) and returns: a :class:`DenseResult` when it stores the
minimal feature of every subset (n <= 12), a :class:`CompactResult` when there are too many
subsets to store (the whole grid). Each result carries its own run-folder tensors
(:meth:`tensors`) and its own numbers of ``summary.json`` (:meth:`summary`), so nothing
downstream asks which layout it holds (docs/run-folder.md).

Pass counts mean one thing in every solver: ``passes`` are generator passes with an input
gradient (forward and backward) spent per subset, ``forward_passes`` forward-only passes per
checked subset, the final constraint check included. A render of a cell's crop (the game per
cell, :mod:`regprim.solvers.problem.cells`) counts as the share of a pass that its feature
positions are of the window's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from regprim.config import SolverConfig
from regprim.core.components import ComponentTable
from regprim.core.interactions import universal_matching_residual
from regprim.core.reconstruction import reconstruct_features, selection
from regprim.solvers.or_objective import alpha_of, to_bits
from regprim.solvers.problem.objective import Objective


def constraint_warnings(meets: Tensor, checked: str, constraint: float) -> list[str]:
    """A warning whenever any checked subset misses the reconstruction constraint."""
    missed = int((~meets).sum())
    if not missed:
        return []
    return [
        f"{missed} of {len(meets)} checked subsets ({checked}) miss the reconstruction "
        f"constraint (relative masked error >= {constraint}); their components are not exact: "
        "see summary.json subsets_failing_constraint, raise --or-steps or --max-steps"
    ]


def _checked_summary(
    rel: Tensor, meets: Tensor, solved: slice, failing: list[int], checked: str, objective
) -> dict[str, Any]:
    """The constraint numbers of ``summary.json`` over the checked subsets (``solved``: the
    ones a solver worked on, for the median and the warnings), and the passes' memory: the
    micro-batch that fit and the measurements it came from (:meth:`Objective.fit`)."""
    cfg = objective.cfg
    return {
        "micro_batch": objective.micro,
        "pass_memory": objective.pass_bytes,
        "subsets_meeting_constraint": float(meets.float().mean()),
        "subsets_failing_constraint": failing,
        "subsets_checked": checked,
        "warnings": constraint_warnings(meets[solved], checked, cfg.constraint),
        "rel_error_median": float(rel[solved].median()) if len(rel[solved]) else 0.0,
        "rel_error_max": float(rel.max()),
    }


@dataclass
class DenseResult:
    """The minimal features of every subset, in bitmask order.

    Attributes:
        u: ``(2**n, *feature_shape)``; ``u[0] = f0``.
        rel_error: ``(2**n,)`` masked squared error of ``g(u(S))`` on S over that of ``g(f0)``.
        meets: ``(2**n,)`` bool, ``rel_error < constraint``.
        passes: ``(2**n,)`` passes with an input gradient spent on each subset (an OR-structured
            solve's passes are shared by all subsets: each holds the mean).
        chunk: subsets optimised together.
        objective: the objective they minimise (to check other minimal features against it).
        value: ``(2**n,)`` the objective of Eq. 8 at each minimal feature.
        forward_passes: ``(2**n,)`` forward-only passes on each subset: line searches and the
            final constraint check.
        steps: ``(2**n,)`` optimiser steps of each subset.
        residual: ``(2**n,)`` KKT residual at the end (:func:`regprim.solvers.lbfgs.kkt_residual`).
        converged: ``(2**n,)`` bool: stopped by the convergence test, not by the step cap.
        beta: ``(n, *feature_shape)`` for the OR-structured solvers (None for the paper's).
        table: the OR components, made by Eq. 10 (:func:`regprim.solvers.components.or_components`,
            the pipeline's interactions stage); None before.
    """

    u: Tensor
    rel_error: Tensor
    meets: Tensor
    passes: Tensor
    chunk: int
    objective: Objective = field(repr=False)
    value: Tensor
    forward_passes: Tensor
    steps: Tensor
    residual: Tensor
    converged: Tensor
    beta: Tensor | None = None
    table: ComponentTable | None = None

    def tensors(self, f0: Tensor, light: bool = False) -> dict[str, Tensor]:
        """The solver's tensors of the run folder, with universal matching checked on every
        subset (Theorem 3.3). ``light``: as a :class:`CompactResult` stores them (beta, the
        non-zero components, every non-empty subset as a checked one), needing a beta."""
        assert self.table is not None, "or_components (Eq. 10) makes the table"
        components = self.table.dense()
        residual = universal_matching_residual(self.u, components, f0)
        if not torch.isfinite(residual).all():
            msg = "universal matching residual is not finite; the minimal features hold NaN or inf"
            raise ValueError(msg)
        if light:
            assert self.beta is not None, "ExplainConfig refuses light storage without a beta"
            held = self.table.values.flatten(1).ne(0).any(1)  # exact zeros are not stored
            return {
                "beta": self.beta,
                "component_masks": self.table.masks[held.to(self.table.masks.device)],
                "components": self.table.values[held],
                "heldout_masks": torch.arange(1, len(self.u), device=self.u.device),
                "heldout_rel_error": self.rel_error[1:],
                "meets_constraint": self.meets[1:].to(torch.uint8),
                "universal_matching_residual": residual[1:],
            }
        return {
            "minimal_features": self.u,
            "components": components,
            "rel_error": self.rel_error,
            "passes": self.passes,
            "steps": self.steps,
            "residual": self.residual,
            "converged": self.converged.to(torch.uint8),
            "universal_matching_residual": residual,
        } | ({} if self.beta is None else {"beta": self.beta})

    def summary(self) -> dict[str, Any]:
        """The solver's numbers of ``summary.json``; the empty set (``u = f0`` by definition,
        nothing solved) is left out of every mean."""
        per = slice(1, None)
        failing = torch.nonzero(~self.meets).flatten().cpu().tolist()
        checked = _checked_summary(
            self.rel_error, self.meets, per, failing, "every subset", self.objective
        )
        return checked | {
            "rounded_numbers": 0,
            "mean_passes_per_subset": float(self.passes[per].float().mean()),
            "mean_forward_passes_per_subset": float(self.forward_passes[per].float().mean()),
            "mean_steps_per_subset": float(self.steps[per].float().mean()),
            "subsets_converged": float(self.converged[per].float().mean()),
            "subsets_capped": torch.nonzero(~self.converged).flatten().tolist(),
            "residual_max": float(self.residual[per].max()),
            "residual_median": float(self.residual[per].median()),
            "objective": float(self.value.sum()),
            "chunk": self.chunk,
        }


@dataclass
class CompactResult:
    """A solve with too many subsets to store (n > 12): beta, the non-zero components in
    closed form, and the minimal features checked on held-out subsets.

    Attributes:
        beta: ``(n, *feature_shape)``.
        heldout_masks: ``(K,)`` bitmasks of the held-out subsets (never sampled by the solve).
        rel_error, meets, value: ``(K,)`` of the held-out subsets, as in :class:`DenseResult`.
        passes: passes with an input gradient per sampled subset (the run's mean).
        steps: optimiser steps of the solve.
        residual: KKT residual of beta at the end.
        converged: ``residual < or_gtol``.
        chunk: subsets per step.
        objective: the objective the solve minimised.
        rounded_numbers: numbers whose betas were rounded to list their components
            (:func:`regprim.solvers.whole_grid.settle`).
        table: the non-zero components, made by Eq. 10 in closed form
            (:func:`regprim.solvers.components.or_components`); None before.
    """

    beta: Tensor
    heldout_masks: Tensor
    rel_error: Tensor
    meets: Tensor
    value: Tensor
    passes: float
    steps: int
    residual: float
    converged: bool
    chunk: int
    objective: Objective = field(repr=False)
    rounded_numbers: int = 0
    table: ComponentTable | None = None

    def universal_matching(self) -> Tensor:
        """``(K,)`` universal matching on the held-out subsets: each one's minimal feature
        against ``f0`` plus the components it meets, over ``||f - f0||`` (in the window, where
        the solve ran)."""
        assert self.table is not None, "or_components (Eq. 10) makes the table"
        obj = self.objective
        beta, values = obj.crop(self.beta), obj.crop(self.table.values)
        scale = obj.df.norm().clamp_min(1e-30)
        residuals = []
        for tags in self.heldout_masks.split(self.chunk):
            u = obj.features(alpha_of(beta, to_bits(tags, obj.n).to(beta.device)))
            matched = reconstruct_features(values, obj.f0, selection(self.table.masks, tags))
            residuals.append((matched - u).flatten(1).norm(dim=1) / scale)
        return torch.cat(residuals)

    def tensors(self, f0: Tensor, light: bool = False) -> dict[str, Tensor]:
        """The solver's tensors of the run folder: beta, the component list, the held-out
        subsets and their checks (always light)."""
        assert self.table is not None, "or_components (Eq. 10) makes the table"
        return {
            "beta": self.beta,
            "component_masks": self.table.masks,
            "components": self.table.values,
            "heldout_masks": self.heldout_masks,
            "heldout_rel_error": self.rel_error,
            "universal_matching_residual": self.universal_matching(),
        }

    def summary(self) -> dict[str, Any]:
        """The solver's numbers of ``summary.json``: the constraint over the held-out subsets,
        one set of diagnostics for the one optimisation."""
        failing = self.heldout_masks[torch.nonzero(~self.meets).flatten().cpu()].tolist()
        checked = f"{len(self.meets)} held-out subsets"
        summary = _checked_summary(
            self.rel_error, self.meets, slice(None), failing, checked, self.objective
        )
        return summary | {
            "rounded_numbers": self.rounded_numbers,
            "mean_passes_per_subset": float(self.passes),
            "mean_forward_passes_per_subset": 1.0,  # each held-out subset checked once
            "mean_steps_per_subset": float(self.steps),
            "subsets_converged": float(self.converged),
            "subsets_capped": [],
            "residual_max": float(self.residual),
            "residual_median": float(self.residual),
            "objective": float(self.value.sum()),
            "chunk": self.chunk,
        }


MinimalFeatures = DenseResult | CompactResult


class Solver(Protocol):
    """What differs per solver: its name, memory and pass model, its convergence note, and the
    solve itself."""

    name: str
    settings: tuple[str, ...]  # the SolverConfig fields this solver reads (config.read_by)

    def memory_bytes(self, n: int, numel: int) -> int: ...

    def expected_passes(self, cfg: SolverConfig, n: int) -> float: ...

    def seconds_per_pass(self, obj: Objective) -> float: ...

    def convergence_note(self, cfg: SolverConfig, summary: dict) -> str: ...

    def solve(
        self,
        obj: Objective,
        resume: dict[str, Tensor] | None,
        on_chunk: Callable[[dict[str, Tensor]], None] | None,
        progress: bool,
    ) -> MinimalFeatures: ...
