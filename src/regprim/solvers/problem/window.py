"""The players' window: optimise and render only the feature positions that reach the players.

For a convolutional ``(C, h, w)`` feature, the smallest window of positions with a path to a
player pixel (plus one position of margin) is optimised and rendered; the rest stays at the
sparsity minimiser. It is used only where ``g`` of the cropped feature provably equals the crop
of ``g`` on the player pixels (checked on random features; BigGAN's global attention fails the
check and runs uncropped). On dcgan-faces n = 9 the window is 12x14 of 16x16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


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
def find_window(
    render: Callable[[Tensor], Tensor], u: Tensor, player_masks: Tensor, reach: Tensor
) -> Window | None:
    """The window holding every number in ``reach`` (the players' reach sets, ``(n, C, h, w)``),
    or None when cropping does not apply, does not save (more than 80% of the map) or is not
    exact: ``render`` (features of any size to images) of the crop of two random features ``u``
    ``(2, C, h, w)`` must give the crop of their images on the players' pixels
    (``player_masks`` ``(n, H, W)``)."""
    if u.dim() != 4:
        return None
    _, _, h, w = u.shape
    height, width = player_masks.shape[1:]
    if height % h or width % w:
        return None
    sy, sx = height // h, width // w
    union = player_masks.any(0)
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
    full = window.crop_image(render(u))
    try:
        cropped = render(window.crop(u))
    except Exception:  # a generator that only takes its own feature shape: no window
        return None
    if cropped.shape != full.shape:
        return None
    diff = ((cropped - full).abs() * window.crop_image(union)).max()
    if diff > 1e-4 * full.abs().max().clamp_min(1e-12):
        return None
    return window
