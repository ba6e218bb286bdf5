"""The players' window: optimise and render only the feature positions that reach the players.

For a convolutional ``(C, h, w)`` feature, the smallest window of positions with a path to a
player pixel (plus one position of margin) is optimised and rendered; the rest stays at the
sparsity minimiser. It is used only where ``g`` of the cropped feature provably equals the crop
of ``g`` on the player pixels (checked on random features; BigGAN's global attention fails the
check and runs uncropped). On dcgan-faces n = 9 the window is 12x14 of 16x16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from regprim.solvers.objective import Objective


@dataclass(frozen=True)
class Window:
    """Feature rows/cols ``fy, fx`` and the image rows/cols ``py, px`` they render."""

    fy: slice
    fx: slice
    py: slice
    px: slice

    def crop(self, t: Tensor) -> Tensor:
        """A ``(..., h, w)`` feature tensor restricted to the window."""
        return t[..., self.fy, self.fx]

    def crop_image(self, t: Tensor) -> Tensor:
        """A ``(..., H, W)`` image or mask restricted to the rendered window."""
        return t[..., self.py, self.px]

    def expand(self, alpha: Tensor, fill: Tensor) -> Tensor:
        """Window ``alpha`` ``(B, C, h', w')`` back to full size, ``fill`` outside."""
        full = fill.expand(alpha.shape[0], *fill.shape).clone()
        full[..., self.fy, self.fx] = alpha
        return full


@torch.no_grad()
def find_window(obj: Objective, reach: Tensor) -> Window | None:
    """The window of ``obj`` (full-size tensors) holding every number in ``reach`` (the
    players' reach sets, ``(n, C, h, w)``), or None when cropping does not apply, does not save
    (more than 80% of the map) or is not exact."""
    if obj.df.dim() != 3:
        return None
    _, h, w = obj.df.shape
    height, width = obj.x.shape[1:]
    if height % h or width % w:
        return None
    sy, sx = height // h, width // w
    union = obj.player_masks.any(0)
    live = reach.any(0)
    rows = torch.nonzero(live.any(0).any(1)).flatten()
    cols = torch.nonzero(live.any(0).any(0)).flatten()
    if not len(rows):
        return None
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    if (r1 - r0) * (c1 - c0) > 0.8 * h * w:
        return None
    window = Window(slice(r0, r1), slice(c0, c1), slice(r0 * sy, r1 * sy), slice(c0 * sx, c1 * sx))
    if window.crop_image(union).sum() != union.sum():
        return None
    rng = torch.Generator(device=obj.x.device).manual_seed(1)
    alpha = torch.rand(2, *obj.df.shape, generator=rng, device=obj.x.device)
    u = (obj.f0 + alpha * obj.df).contiguous(memory_format=obj.memory_format)
    full = window.crop_image(obj.gen.g(u, obj.code))
    crop = window.crop(u).contiguous(memory_format=obj.memory_format)
    try:
        cropped = obj.gen.g(crop, obj.code)
    except Exception:  # a generator that only takes its own feature shape: no window
        return None
    if cropped.shape != full.shape:
        return None
    diff = ((cropped - full).abs() * window.crop_image(union)).max()
    if diff > 1e-4 * full.abs().max().clamp_min(1e-12):
        return None
    return window
