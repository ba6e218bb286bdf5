"""The game per cell: each player's pixels rendered from a small crop of the feature.

A cell's pixels depend only on the numbers that reach them (its reach set,
:mod:`regprim.solvers.problem.reach`), and a number's alpha in a subset S depends only on the
players of S that reach it. So the error of S on cell i depends on S only through
``S & neighbours[i]``, the players whose reach sets meet cell i's, and it can be rendered from
the crop of the feature around cell i's reach set instead of the whole window. On dcgan-faces
block3 n = 9 the crops are 5x5 of the 12x14 window and the 511 subsets' errors on their cells
take 304 cell renders: the exact objective costs about 9% of rendering every subset.

As the window (:mod:`regprim.solvers.problem.window`), the crops are used only where rendering a
crop provably gives the cell's pixels (checked on random features); elsewhere the game has no
cells (None) and is played on whole renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from regprim.solvers.problem.window import bounding_box, pixel_scale

MARGIN = 0  # positions around a cell's reach set: none, as its reach is every number with a
# path to its pixels (the check below confirms each crop renders them exactly)


@dataclass(frozen=True)
class Cells:
    """One crop of ``size`` feature positions per player, at ``origins``; ``scale`` image pixels
    per position; ``neighbours[i]``: the bitmask of the players whose reach meets cell i's."""

    origins: tuple[tuple[int, int], ...]
    size: tuple[int, int]
    scale: tuple[int, int]
    neighbours: tuple[int, ...]
    share: float  # a crop's positions over the whole map's (what a cell render costs)

    def crop(self, t: Tensor, cell: int) -> Tensor:
        """Cell ``cell``'s crop of a ``(..., h, w)`` feature tensor."""
        (r, c), (h, w) = self.origins[cell], self.size
        return t[..., r : r + h, c : c + w]

    def crop_image(self, t: Tensor, cell: int) -> Tensor:
        """The pixels ``(..., H', W')`` that cell ``cell``'s crop renders."""
        (r, c), (h, w), (sy, sx) = self.origins[cell], self.size, self.scale
        return t[..., r * sy : (r + h) * sy, c * sx : (c + w) * sx]

    def stack(self, t: Tensor, image: bool = False) -> Tensor:
        """Every cell's crop of ``t`` stacked: ``(n, ...)``."""
        crop = self.crop_image if image else self.crop
        return torch.stack([crop(t, i) for i in range(len(self.origins))])


@torch.no_grad()
def find_cells(
    render: Callable[[Tensor], Tensor], u: Tensor, player_masks: Tensor, reach: Tensor
) -> Cells | None:
    """The cells of features ``(C, h, w)`` with reach sets ``reach`` ``(n, C, h, w)`` and pixel
    masks ``player_masks`` ``(n, H, W)``, or None where a crop does not apply, does not save
    (a crop of more than half the map) or is not exact: ``render`` (features of any size to
    images) of each cell's crop of two random features ``u`` ``(2, C, h, w)`` must give their
    images on the cell's pixels."""
    scale = pixel_scale(u, player_masks)
    if scale is None:
        return None
    (sy, sx), (h, w) = scale, u.shape[2:]
    n = reach.shape[0]
    boxes = [bounding_box(reach[i].any(0), MARGIN) for i in range(n)]
    if any(b is None for b in boxes):
        return None
    bh = min(max(b[1] - b[0] for b in boxes), h)
    bw = min(max(b[3] - b[2] for b in boxes), w)
    if bh * bw > 0.5 * h * w:
        return None
    origins = tuple((min(max(r0, 0), h - bh), min(max(c0, 0), w - bw)) for r0, _, c0, _ in boxes)
    flat = reach.flatten(1)
    neighbours = tuple(
        sum(1 << j for j in range(n) if bool((flat[i] & flat[j]).any())) for i in range(n)
    )
    cells = Cells(origins, (bh, bw), (sy, sx), neighbours, bh * bw / (h * w))
    full = render(u)
    largest = full.abs().max().clamp_min(1e-12)
    for i in range(n):
        mask = cells.crop_image(player_masks[i], i)
        if mask.sum() != player_masks[i].sum():  # the cell is not inside its crop
            return None
        try:
            part = render(cells.crop(u, i))
        except Exception:  # a generator that only takes its own feature shape: no cells
            return None
        if part.shape[-2:] != mask.shape:
            return None
        if ((part - cells.crop_image(full, i)).abs() * mask).max() > 1e-4 * largest:
            return None
    return cells
