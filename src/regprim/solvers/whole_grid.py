"""Whole-grid runs: OR-structured minimal features with too many subsets to store (n > 12).

The solver (:mod:`regprim.solvers.or_structured`) samples subsets, so nothing of size ``2**n``
is ever made. At the end this module lists the non-zero components in closed form from ``beta``
(:func:`components_of`, after :func:`settle` has rounded the few numbers whose betas stay
fractional over too many players) and checks the minimal features on ``HELDOUT`` subsets the
solver never sampled (:func:`heldout_subsets`), with universal matching on each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from regprim.core.components import ComponentTable
from regprim.core.reconstruction import reconstruct_features, selection
from regprim.solvers.base import CompactResult
from regprim.solvers.objective import Objective
from regprim.solvers.or_objective import alpha_of, sample_subsets, to_bitmasks

HELDOUT = 1000  # held-out subsets checked in a whole-grid run

MAX_SUPPORT = 12  # players one fractional number may spread over in a compact run


def components_of(beta: Tensor, df: Tensor) -> dict[int, Tensor]:
    """Every non-zero OR component of ``beta`` ``(n, *shape)``, exactly, without touching all
    2**n subsets: a number with support T (its players with beta > 0) contributes only to the
    subsets of T, ``df * prod_{i in S} beta_i * prod_{j in T - S} (1 - beta_j)``; with a
    binary beta, to T alone. Call :func:`settle` first, so that no fractional number spreads over
    more than ``MAX_SUPPORT`` players. Returns ``{bitmask: component (*shape)}``."""
    n = beta.shape[0]
    flat, dflat = beta.flatten(1), df.flatten()
    support = ((flat > 0).long() << torch.arange(n, device=flat.device)[:, None]).sum(0)
    out: dict[int, Tensor] = {}
    for s in support.unique().tolist():
        if s == 0:
            continue
        numbers = torch.nonzero(support == s).flatten()
        players = [i for i in range(n) if s >> i & 1]
        b = flat[players][:, numbers]  # (|T|, count)
        if bool(((b == 0) | (b == 1)).all()):
            subsets = [s]
        else:
            subsets = [
                sum(1 << players[j] for j in range(len(players)) if t >> j & 1)
                for t in range(1, 2 ** len(players))
            ]
        for mask in subsets:
            inside = torch.tensor(
                [mask >> i & 1 for i in players], dtype=torch.bool, device=b.device
            )
            weight = torch.where(inside[:, None], b, 1 - b).prod(0)
            value = torch.zeros_like(dflat)
            value[numbers] = dflat[numbers] * weight
            if bool(value.any()):
                out[mask] = out.get(mask, 0) + value.view(df.shape)
    return out


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
    """A run with too many subsets to store: the non-zero components in closed form, the
    minimal features checked on held-out subsets (with universal matching there)."""
    cfg = obj.cfg
    beta, rounded = settle(beta)
    found = components_of(beta, obj.df)
    masks = torch.tensor(list(found), dtype=torch.long)  # on the CPU, as every bitmask list
    values = torch.stack(list(found.values())) if found else obj.df.new_zeros(0, *obj.df.shape)
    bits = heldout_subsets(obj.n, HELDOUT, seen)
    held = to_bitmasks(bits)
    rel, value, residuals = [], [], []
    scale = obj.df.norm().clamp_min(1e-30)
    for part, tags in zip(bits.split(cfg.or_batch), held.split(cfg.or_batch), strict=True):
        u = obj.f0 + alpha_of(beta, part.to(beta.device)) * obj.df
        r, v = obj.check(u, tags)
        rel.append(r)
        value.append(v)
        matched = reconstruct_features(values, obj.f0, selection(masks, tags))
        residuals.append((matched - u).flatten(1).norm(dim=1) / scale)
    rel_error = torch.cat(rel)
    return CompactResult(
        beta=obj.expand(beta),
        table=ComponentTable(masks, obj.expand(values) if len(values) else values, obj.n),
        heldout_masks=held,
        rel_error=rel_error,
        meets=rel_error < cfg.constraint,
        value=torch.cat(value),
        um_residual=torch.cat(residuals),
        passes=passes,
        steps=steps,
        residual=residual,
        converged=residual < cfg.or_gtol,
        chunk=cfg.or_batch,
        objective=obj,
        rounded_numbers=rounded,
    )
