"""Which feature numbers can change the pixels of each player: the receptive-field probe.

``reach_sets`` asks, for every player i, which numbers of ``u = f0 + alpha * (f - f0)`` have a
non-zero gradient of a random projection of the image on player i's pixels, at several points of
the box (``alpha = 1``, ``alpha = 0`` and random ones) and takes the union: the numbers with a
structural path to those pixels. A unit that is inactive at one point can be active elsewhere in
the box, so one point is not enough (at the parent's solution it froze a needed number in 1 of 8
runs, depending on float noise at the 1e-4 level). The other numbers only feel the sparsity term:
solvers hold them at its minimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

POINTS = 4  # alpha = 1, alpha = 0, then uniform random points of the box


def reach_sets(
    render: Callable[[Tensor], Tensor],
    player_masks: Tensor,
    shape: tuple[int, ...],
    channels: int,
    points: int = POINTS,
    seed: int = 0,
) -> Tensor:
    """Bool ``(n, *shape)``: the numbers of alphas of ``shape`` with a path to each player's
    pixels (``player_masks`` ``(n, H, W)``), through ``render`` (alphas ``(B, *shape)`` to images
    ``(B, channels, H, W)``; module docstring)."""
    device = player_masks.device
    rng = torch.Generator(device=device).manual_seed(seed)
    probe = torch.randn(channels, *player_masks.shape[1:], generator=rng, device=device)
    masks = player_masks[:, None].float()  # (n, 1, H, W)
    n = masks.shape[0]
    found = torch.zeros(n, *shape, dtype=torch.bool, device=device)
    for k in range(points):
        if k < 2:
            alpha = torch.full((n, *shape), 1.0 - k, device=device)
        else:
            alpha = torch.rand(n, *shape, generator=rng, device=device)
        alpha.requires_grad_(True)
        (grad,) = torch.autograd.grad((render(alpha) * probe * masks).sum(), alpha)
        found |= grad != 0
    return found


def reach_bits(sets: Tensor) -> Tensor:
    """Per number, the bitmask of the players it reaches (``int64``, ``sets``' trailing shape)."""
    weights = 2 ** torch.arange(sets.shape[0], device=sets.device, dtype=torch.int64)
    return (sets.to(torch.int64) * weights.view(-1, *[1] * (sets.dim() - 1))).sum(0)


def live_for(bits: Tensor, subsets: Tensor) -> Tensor:
    """Bool ``(B, *shape)``: the numbers that reach a player of each subset."""
    subsets = subsets.to(bits.device).view(-1, *[1] * bits.dim())
    return (bits[None] & subsets) != 0


def reach_order(sets: Tensor) -> tuple[Tensor, int]:
    """Per number, its players with those of its reach set first: ``(order, m)`` with ``order``
    ``(m, D)`` (long) the first ``m`` of them, ``m`` the largest reach set (at least 1). Fixed
    for a solve, so it is sorted once (sorting it every step took 3 of the whole grid's 20 s)."""
    inside = sets.flatten(1)
    m = max(int(inside.sum(0).max()), 1)
    return torch.argsort((~inside).to(torch.int8), dim=0, stable=True)[:m], m
