"""Image regions: an H x W grid of cells, the player cells N, and subset masks.

Cells are numbered row-major, ``cell = row * W + col``. Players are grid cells listed in bit
order: player ``i`` is bit ``i`` of every subset bitmask (docs/method.md). Uneven division is
handled by rounding the cell edges: edges of the rows are ``round(r * height / H)`` for r = 0..H.

This module is the one place that computes masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    """An ``rows x cols`` grid over an image of ``height x width`` pixels."""

    rows: int
    cols: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            msg = f"grid {self.rows}x{self.cols} must have at least one row and one column"
            raise ValueError(msg)
        if self.rows > self.height or self.cols > self.width:
            msg = (
                f"grid {self.rows}x{self.cols} is larger than the {self.height}x{self.width} "
                f"image; use at most {self.height}x{self.width} cells"
            )
            raise ValueError(msg)

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def row_edges(self) -> list[int]:
        return [round(r * self.height / self.rows) for r in range(self.rows + 1)]

    def col_edges(self) -> list[int]:
        return [round(c * self.width / self.cols) for c in range(self.cols + 1)]

    def cell_box(self, cell: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) pixel bounds of ``cell``."""
        r, c = divmod(cell, self.cols)
        re, ce = self.row_edges(), self.col_edges()
        return re[r], re[r + 1], ce[c], ce[c + 1]

    def cell_masks(self) -> Tensor:
        """Boolean masks ``(cells, height, width)``."""
        masks = torch.zeros(self.cells, self.height, self.width, dtype=torch.bool)
        for cell in range(self.cells):
            t, b, left, right = self.cell_box(cell)
            masks[cell, t:b, left:right] = True
        return masks

    def check_cells(self, cells: list[int], what: str = "cell ids") -> list[int]:
        bad = [c for c in cells if not 0 <= c < self.cells]
        if bad:
            msg = (
                f"{what} {bad} out of range for a {self.rows}x{self.cols} grid; "
                f"use ids 0..{self.cells - 1} (row * {self.cols} + col)"
            )
            raise ValueError(msg)
        repeated = sorted({c for c in cells if cells.count(c) > 1})
        if repeated:
            msg = f"{what} {repeated} are repeated; list each cell once"
            raise ValueError(msg)
        return list(cells)


def parse_grid(text: str) -> tuple[int, int]:
    """``"6x6"`` -> (6, 6)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"grid {text!r} is not of the form ROWSxCOLS, e.g. 6x6"
        raise ValueError(msg) from None
    return rows, cols


def parse_cells(text: str) -> list[int] | str:
    """``"7,8,14"`` -> [7, 8, 14]; ``"all"`` stays ``"all"`` (every cell of the grid)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"cells {text!r} must be comma-separated integers, e.g. 7,8,14"
        raise ValueError(msg) from None


def center_players(grid: Grid, n: int) -> list[int]:
    """The ``n`` cells whose centres are nearest the image centre (ties in row-major order).

    The default rule: the generators regprim ships (faces, eyes) and BigGAN's ImageNet classes
    are trained on object-centred images, so the object sits in the middle. On a 6x6 grid and
    n = 9 it gives the central 2x2 cells, then 8, 9, 13, 16, 19 of the ring around them.
    """
    cy, cx = grid.height / 2, grid.width / 2

    def distance(cell: int) -> float:
        t, b, left, right = grid.cell_box(cell)
        return ((t + b) / 2 - cy) ** 2 + ((left + right) / 2 - cx) ** 2

    return sorted(range(grid.cells), key=lambda c: (round(distance(c), 6), c))[:n]


def foreground_players(image: Tensor, baseline_image: Tensor, grid: Grid, n: int) -> list[int]:
    """The ``n`` cells where the image differs most from the baseline image.

    Score of a cell = mean absolute difference between the target image and the baseline image
    ``g(f0)`` over the cell's pixels and channels; the top ``n`` cells, by decreasing score, are
    the players. The baseline image is the "average" image, so this picks the cells the target's
    own content lives in (the face, the eye) rather than the background all images share.
    """
    diff = (image - baseline_image).abs().mean(dim=0)  # (H, W)
    masks = grid.cell_masks()
    scores = torch.stack([diff[m].mean() for m in masks])
    return [int(c) for c in torch.argsort(scores, descending=True, stable=True)[:n]]


def random_players(grid: Grid, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(c) for c in rng.choice(grid.cells, size=n, replace=False)]


def choose_players(
    rule: str, grid: Grid, n: int, image: Tensor, baseline_image: Tensor, seed: int = 0
) -> list[int]:
    """``n`` player cells (``1 <= n <= grid.cells``) by ``rule``: ``center``, ``foreground`` or
    ``random``."""
    if rule == "center":
        return center_players(grid, n)
    if rule == "foreground":
        return foreground_players(image, baseline_image, grid, n)
    return random_players(grid, n, seed)


def subset_masks(player_masks: Tensor, subsets: Tensor) -> Tensor:
    """Pixel masks ``(len(subsets), H, W)`` (bool) of the union of the players in each subset.

    ``player_masks`` is ``(n, H, W)``; ``subsets`` holds bitmasks.
    """
    n = player_masks.shape[0]
    bits = ((subsets[:, None] >> torch.arange(n, device=subsets.device)[None, :]) & 1).to(
        torch.float32
    )
    return (bits @ player_masks.flatten(1).to(torch.float32)).view(-1, *player_masks.shape[1:]) > 0


def bitmask(players: list[int], cells: list[int]) -> int:
    """Bitmask of grid ``cells`` (all must be players, each named once)."""
    bit = {c: i for i, c in enumerate(players)}
    missing = [c for c in cells if c not in bit]
    if missing:
        msg = f"cells {missing[:10]} are not players of this run; players are {players}"
        raise ValueError(msg)
    if len(set(cells)) != len(cells):  # linear: a request may name many cells
        seen: set[int] = set()
        repeated = sorted({c for c in cells if c in seen or seen.add(c)})
        msg = f"cells {repeated[:10]} are repeated; name each cell once"
        raise ValueError(msg)
    return sum(1 << bit[c] for c in cells)


def cells_of(mask: int, players: list[int]) -> list[int]:
    """Grid cells of a bitmask, sorted: the cell list a person reads (grid ids, ``row * cols +
    col``); the bitmask stays the program's key."""
    return sorted(p for i, p in enumerate(players) if mask >> i & 1)
