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


def pixel_scale(u: Tensor, player_masks: Tensor) -> tuple[int, int] | None:
    """Image pixels per feature position ``(sy, sx)`` of features ``u`` ``(B, C, h, w)`` over
    images of ``player_masks``' size, or None where the feature is not such a map or its
    positions do not divide the image."""
    if u.dim() != 4:
        return None
    (h, w), (height, width) = u.shape[2:], player_masks.shape[1:]
    if height % h or width % w:
        return None
    return height // h, width // w


def bounding_box(live: Tensor, margin: int) -> tuple[int, int, int, int] | None:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the true positions of ``live`` ``(h, w)``
    with ``margin`` around them (not clipped), or None where none is true."""
    rows = torch.nonzero(live.any(1)).flatten()
    cols = torch.nonzero(live.any(0)).flatten()
    if not len(rows):
        return None
    return (
        int(rows[0]) - margin,
        int(rows[-1]) + 1 + margin,
        int(cols[0]) - margin,
        int(cols[-1]) + 1 + margin,
    )


@torch.no_grad()
def find_window(
    render: Callable[[Tensor], Tensor], u: Tensor, player_masks: Tensor, reach: Tensor
) -> Window | None:
    """The window holding every number in ``reach`` (the players' reach sets, ``(n, C, h, w)``),
    or None when cropping does not apply, does not save (more than 80% of the map) or is not
    exact: ``render`` (features of any size to images) of the crop of two random features ``u``
    ``(2, C, h, w)`` must give the crop of their images on the players' pixels
    (``player_masks`` ``(n, H, W)``)."""
    scale = pixel_scale(u, player_masks)
    box = None if scale is None else bounding_box(reach.any(0).any(0), 1)
    if scale is None or box is None:
        return None
    (sy, sx), (h, w) = scale, u.shape[2:]
    union = player_masks.any(0)
    r0, r1, c0, c1 = max(box[0], 0), min(box[1], h), max(box[2], 0), min(box[3], w)
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
