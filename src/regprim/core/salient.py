"""Salient feature components (Algorithm 1; Appendix H).

Components are ranked by L2 norm. Two rules choose the salient set:

- ``"tau"``: ``||Delta f_k||_2 > tau * ||f - f0||_2``. Algorithm 1 thresholds the raw norm; here
  tau is relative to the size of the whole change ``f - f0`` so that one value works across
  models and layers.
- ``"top"``: the ``top`` ratio of the non-zero components with the largest norms (Appendix H
  found the top 60% salient for most samples).
- ``"removal"``: remove components by decreasing norm until the image matches the baseline image
  (Appendix H; :func:`removal_salient` states the similarity rule). It needs the generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from regprim.config import SALIENT_RULES
from regprim.core.components import component_norms, ranked, ranked_rows


def energy_count(norms: Tensor, share: float = 0.9) -> int:
    """How many components, largest first, carry ``share`` of the total squared norm (the
    ones not listed are zero): means the same at any n."""
    sq = (norms**2).sort(descending=True).values
    cum = torch.cumsum(sq, 0) / sq.sum().clamp_min(1e-30)
    carry = int(torch.searchsorted(cum, torch.tensor(share, device=cum.device))) + 1
    return min(carry, len(sq))


def energy_fraction(norms: Tensor, count: int | None = None, share: float = 0.9) -> float:
    """:func:`energy_count` as a fraction of ``count`` components (default: as many as
    ``norms``): small = sparse (Fig. 5; at n = 36 a fraction of 2**36 - 1 says little)."""
    return energy_count(norms, share) / (count or len(norms))


def select_salient(
    masks: Tensor,
    norms: Tensor,
    scale: float,
    rule: str = "tau",
    tau: float = 0.05,
    top: float = 0.6,
) -> Tensor:
    """Bitmasks of the salient components, sorted by decreasing norm.

    Args:
        masks, norms: the components' action regions ``(m,)`` and L2 norms ``(m,)``.
        scale: ``||f - f0||_2`` (the "tau" rule is relative to it).
    """
    order = ranked(masks, norms)
    if rule == "tau":
        if not tau >= 0:
            msg = f"salient tau {tau} must be >= 0 (a fraction of ||f - f0||)"
            raise ValueError(msg)
        by_mask = dict(zip(masks.tolist(), norms.cpu().tolist(), strict=True))
        return order[torch.tensor([by_mask[int(k)] > tau * scale for k in order], dtype=torch.bool)]
    if rule == "top":
        if not 0 < top <= 1:
            msg = f"salient top ratio {top} must be in (0, 1], e.g. 0.6"
            raise ValueError(msg)
        return order[: math.ceil(top * len(order))]
    msg = f"salient rule {rule!r} is not one of {list(SALIENT_RULES[:2])} (or use removal_salient)"
    raise ValueError(msg)


@torch.no_grad()
def removal_salient(
    masks: Tensor,
    values: Tensor,
    f0: Tensor,
    render: Callable[[Tensor], Tensor],
    player_masks: Tensor,
    threshold: float = 0.1,
) -> Tensor:
    """Appendix H: remove components in descending norm order until the image matches the
    baseline image; the removed ones are salient.

    Starting from ``f0 + sum of all components`` (= u(N)), the image after removing the j
    largest components is compared with ``g(f0)`` on the player cells: it "matches" when the
    squared distance is below ``threshold`` times that of the starting image. Returns the
    bitmasks of the removed components, by decreasing norm.
    """
    if not 0 < threshold < 1:
        msg = f"removal threshold {threshold} must be in (0, 1), e.g. 0.1"
        raise ValueError(msg)
    order = ranked_rows(masks, component_norms(values))
    start = f0 + values.sum(0)
    removed = torch.cumsum(values[order.to(values.device)], dim=0)
    features = torch.cat([start[None], start - removed])  # (m + 1, ...): j removed
    images = render(features)
    target = render(f0[None])
    pixels = player_masks.any(0)
    dist = ((images - target) ** 2).sum(1)[:, pixels].sum(1)
    below = torch.nonzero(dist < threshold * dist[0].clamp_min(1e-30)).flatten()
    count = int(below[0]) if len(below) else len(order)
    return masks[order[:count]]
