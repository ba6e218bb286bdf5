"""Whole-grid runs: OR-structured minimal features with too many subsets to store (n > 12).

The solver (:mod:`regprim.solvers.or_structured`) samples subsets, so nothing of size ``2**n``
is ever made. At the end this module rounds the few numbers whose betas stay fractional over too
many players (:func:`settle`, so that their components can be listed in closed form:
:func:`regprim.solvers.components.components_of`) and checks the minimal features on
``HELDOUT`` subsets the solver never sampled (:func:`heldout_subsets`; universal matching on
each once the components are made, :meth:`CompactResult.tensors`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from regprim.solvers.base import CompactResult
from regprim.solvers.or_objective import alpha_of, sample_subsets, to_bitmasks
from regprim.solvers.problem.objective import Objective

HELDOUT = 1000  # held-out subsets checked in a whole-grid run

MAX_SUPPORT = 12  # players one fractional number may spread over in a compact run


def settle(beta: Tensor) -> tuple[Tensor, int]:
    """Round the betas (at 0.5) of every number that keeps fractional betas over more than
    ``MAX_SUPPORT`` players: its components would span too many subsets to list. Returns the
    betas and how many numbers were rounded (the minimal features use the same betas, so
    universal matching stays exact; the held-out check shows what rounding cost)."""
    flat = beta.flatten(1)
    fractional = ((flat > 0) & (flat < 1)).any(0)
    wide = fractional & ((flat > 0).sum(0) > MAX_SUPPORT)
    rounded = torch.where(wide[None], (flat >= 0.5).to(flat.dtype), flat)
    return rounded.view_as(beta), int(wide.sum())


def heldout_subsets(n: int, count: int, seen: set[int], seed: int = 7) -> Tensor:
    """``count`` subsets of mixed sizes (a size uniform in 1..n, then its players uniform) that
    the solver never sampled: bool ``(count, n)``."""
    rng = torch.Generator().manual_seed(seed)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    kept: dict[int, Tensor] = {}
    for _ in range(100):
        bits = sample_subsets(n, count, weights, rng)
        for row, mask in zip(bits, to_bitmasks(bits).tolist(), strict=True):
            if mask not in seen and mask not in kept:
                kept[mask] = row
        if len(kept) >= count:
            break
    return torch.stack(list(kept.values())[:count])


def finish_compact(
    obj: Objective, beta: Tensor, steps: int, passes: float, residual: float, seen: set[int]
) -> CompactResult:
    """A run with too many subsets to store: beta settled, the minimal features checked on
    held-out subsets (its components are Eq. 10's, :func:`regprim.solvers.components`)."""
    cfg = obj.cfg
    beta, rounded = settle(beta)
    bits = heldout_subsets(obj.n, HELDOUT, seen)
    held = to_bitmasks(bits)
    rel, value = [], []
    for part, tags in zip(bits.split(cfg.or_batch), held.split(cfg.or_batch), strict=True):
        r, v = obj.check(obj.features(alpha_of(beta, part.to(beta.device))), tags)
        rel.append(r)
        value.append(v)
    rel_error = torch.cat(rel)
    return CompactResult(
        beta=obj.expand(beta),
        heldout_masks=held,
        rel_error=rel_error,
        meets=rel_error < cfg.constraint,
        value=torch.cat(value),
        passes=passes,
        steps=steps,
        residual=residual,
        converged=residual < cfg.or_gtol,
        chunk=cfg.or_batch,
        objective=obj,
        rounded_numbers=rounded,
    )
