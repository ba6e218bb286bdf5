"""Eq. 10, in one place: the OR components of a solve (:func:`or_components`).

``Delta f_T = sum_{L subseteq T} (-1)^{|T| - |L|} u(L)`` (the Harsanyi/Moebius transform over
subsets of players). A solve that stores every minimal feature (:class:`DenseResult`, n <= 12)
gets it by the fast transform of :func:`regprim.core.interactions.or_interactions`; a whole-grid
solve (:class:`CompactResult`) by its closed form in ``beta`` (:func:`components_of`), the same
numbers without touching the ``2**n`` subsets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from regprim.core.components import ComponentTable
from regprim.core.interactions import or_interactions
from regprim.solvers.base import CompactResult, MinimalFeatures


def components_of(beta: Tensor, df: Tensor) -> dict[int, Tensor]:
    """Every non-zero OR component of ``beta`` ``(n, *shape)``, exactly, without touching all
    2**n subsets: a number with support T (its players with beta > 0) contributes only to the
    subsets of T, ``df * prod_{i in S} beta_i * prod_{j in T - S} (1 - beta_j)``; with a
    binary beta, to T alone. A solve settles its betas first
    (:func:`regprim.solvers.whole_grid.settle`), so that no fractional number spreads over more
    than a few players. Returns ``{bitmask: component (*shape)}``."""
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


def or_components(mf: MinimalFeatures) -> ComponentTable:
    """The OR components (Eq. 10) of a solve, as its table (full-size values)."""
    if not isinstance(mf, CompactResult):
        return ComponentTable.from_dense(or_interactions(mf.u))
    obj = mf.objective
    found = components_of(obj.crop(mf.beta), obj.df)
    masks = torch.tensor(list(found), dtype=torch.long)  # on the CPU, as every bitmask list
    if not found:
        return ComponentTable(masks, mf.beta.new_zeros(0, *mf.beta.shape[1:]), obj.n)
    return ComponentTable(masks, obj.expand(torch.stack(list(found.values())), fill=0.0), obj.n)
