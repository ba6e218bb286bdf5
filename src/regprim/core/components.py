"""The component table: the one result of every decomposition, whatever the solver and the n.

A table holds the OR components ``Delta f_k`` of a run, one row each, with everything aligned
row by row: the action set (a bitmask: bit i = player i), the values, the L2 norms and the orders
``|S_k|``. A run with n <= 12 holds a row for every non-empty subset (in bitmask order); a larger
run holds its non-zero components only. Readers ask the table by action set (``value``,
``norm``), by rank (``ranked``, ``top_k``), by order (``by_order``) or by cells (``meeting``,
``covering``), and never ask how it was stored. A dense ``(2**n, *feature_shape)`` view exists
only on request (``dense``) for small n.

Indexing: every method that takes or returns components speaks bitmasks. The aligned arrays
``masks``, ``values``, ``norms`` and ``orders`` are indexed by row; ``row(mask)`` converts.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

DENSE_VIEW_MAX_N = 16  # a dense view of 2**16 rows is the largest one offered


def component_norms(components: Tensor) -> Tensor:
    """L2 norm of every component: ``(m,)`` for ``(m, *feature_shape)``."""
    return components.flatten(1).norm(dim=1)


def ranked_rows(masks: Tensor, norms: Tensor) -> Tensor:
    """Row indices of the non-zero components, by decreasing norm (ties in the order given):
    the one ranking every rule, metric and figure uses."""
    norms = norms.detach().cpu()  # bitmask lists live on the CPU
    order = torch.argsort(norms, descending=True, stable=True)
    return order[(masks[order] != 0) & (norms[order] > 0)]


def ranked(masks: Tensor, norms: Tensor) -> Tensor:
    """The ``masks`` of the non-zero components, by decreasing norm (:func:`ranked_rows`)."""
    return masks[ranked_rows(masks, norms)]


@dataclass(frozen=True)
class ComponentTable:
    """Components ``values`` ``(m, *feature_shape)`` with action sets ``masks`` ``(m,)``
    (int64, distinct, non-zero) of ``n`` players.

    Attributes:
        norms: ``(m,)`` L2 norm of each row.
        orders: ``(m,)`` the size ``|S_k|`` of each row's action set.
    """

    masks: Tensor
    values: Tensor
    n: int
    norms: Tensor = field(init=False, repr=False)
    orders: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        masks = self.masks.to(torch.long).cpu()  # bitmask lists live on the CPU
        if masks.dim() != 1 or len(masks) != len(self.values):
            msg = f"{len(masks)} action sets for {len(self.values)} component rows"
            raise ValueError(msg)
        if len(masks) and (int(masks.min()) < 1 or int(masks.max()) >= 2**self.n):
            msg = f"action sets must be non-empty bitmasks of {self.n} players (1..2**n - 1)"
            raise ValueError(msg)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "norms", component_norms(self.values).cpu())
        bits = (masks[:, None] >> torch.arange(max(self.n, 1))) & 1
        object.__setattr__(self, "orders", bits.sum(1))

    @classmethod
    def from_dense(cls, components: Tensor) -> ComponentTable:
        """Every non-empty subset's component from ``(2**n, *feature_shape)`` in bitmask order
        (row 0, the empty set, is left out)."""
        n = int(len(components)).bit_length() - 1
        if 2**n != len(components):
            msg = f"a dense table needs 2**n rows, got {len(components)}"
            raise ValueError(msg)
        table = cls(torch.arange(1, 2**n), components[1:], n)
        object.__setattr__(table, "_dense", components)  # the dense view, without a copy
        return table

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def _rows(self) -> dict[int, int]:
        rows = self.__dict__.get("_row_of")
        if rows is None:
            rows = {int(m): j for j, m in enumerate(self.masks.tolist())}
            object.__setattr__(self, "_row_of", rows)
        return rows

    def check(self, mask: Any) -> int:
        """``mask`` as an action set of this table's players: an integer bitmask in
        ``1 .. 2**n - 1``; anything else is a ValueError that says so."""
        try:
            value = None if isinstance(mask, bool) else operator.index(mask)  # ints of any kind
        except TypeError:
            value = None
        if value is None or not 1 <= value < 2**self.n:
            msg = (
                f"action set {mask!r} is not a bitmask of this run's {self.n} players: give an "
                f"integer in 1..{2**self.n - 1} (bit i = player i), e.g. from cells: "
                "run.bitmask([14, 15])"
            )
            raise ValueError(msg)
        return value

    def row(self, mask: int) -> int | None:
        """The row of action set ``mask`` (None when the table holds no such component)."""
        return self._rows().get(self.check(mask))

    def norm(self, mask: int) -> float:
        """L2 norm of the component of ``mask`` (0 for a valid action set not held)."""
        j = self.row(mask)
        return 0.0 if j is None else float(self.norms[j])

    def value(self, masks: list[int] | Tensor) -> Tensor:
        """The components of ``masks`` ``(B, *feature_shape)`` (zero for a valid action set
        not held)."""
        masks = [self.check(m) for m in masks]
        out = self.values.new_zeros(len(masks), *self.feature_shape)
        for j, mask in enumerate(masks):
            row = self.row(mask)
            if row is not None:
                out[j] = self.values[row]
        return out

    @property
    def ranked(self) -> list[int]:
        """Action sets of the non-zero components, by decreasing norm (ties in row order)."""
        cached = self.__dict__.get("_ranked")
        if cached is None:
            cached = ranked(self.masks, self.norms).tolist()
            object.__setattr__(self, "_ranked", cached)
        return cached

    def top_k(self, k: int) -> list[int]:
        """The ``k`` largest non-zero components' action sets."""
        return self.ranked[:k]

    def by_order(self, order: int) -> list[int]:
        """Action sets of the non-zero components with ``|S_k| = order``, by decreasing norm."""
        return [m for m in self.ranked if m.bit_count() == order]

    def meeting(self, target: int) -> list[int]:
        """Non-zero components whose action set meets the bitmask ``target`` (Eq. 7), by
        decreasing norm."""
        return [m for m in self.ranked if m & target]

    def covering(self, target: int) -> list[int]:
        """Non-zero components whose action set contains every player of ``target``."""
        return [m for m in self.ranked if m & target == target]

    def players(self, mask: int) -> tuple[int, ...]:
        """The bit indices (players) of an action set."""
        return tuple(i for i in range(self.n) if mask >> i & 1)

    def total(self) -> Tensor:
        """The sum of all components, ``u(N) - f0`` by universal matching ``(*feature_shape)``."""
        return self.values.sum(0)

    def dense(self) -> Tensor:
        """Every subset's component ``(2**n, *feature_shape)`` in bitmask order, zero where the
        table holds none (small n only)."""
        if "_dense" in self.__dict__:
            return self.__dict__["_dense"]
        if self.n > DENSE_VIEW_MAX_N:
            msg = (
                f"a dense view of n = {self.n} would have 2**{self.n} rows; ask the table by "
                "action set (value, norm, top_k, meeting) instead"
            )
            raise ValueError(msg)
        out = self.values.new_zeros(2**self.n, *self.feature_shape)
        out[self.masks.to(self.values.device)] = self.values
        return out

    def __str__(self) -> str:
        top = ", ".join(f"{self.players(m)}: {self.norm(m):.3g}" for m in self.top_k(5))
        return f"ComponentTable(n={self.n}, rows={len(self)}, non-zero={len(self.ranked)}; {top})"
