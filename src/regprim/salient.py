"""Salient feature components (Algorithm 1; Appendix H).

Components are ranked by L2 norm. Two rules choose the salient set:

- ``"tau"``: ``||Delta f_k||_2 > tau * ||f - f0||_2``. Algorithm 1 thresholds the raw norm; here
  tau is relative to the size of the whole change ``f - f0`` so that one value works across
  models and layers.
- ``"top"``: the ``top`` ratio of the non-zero components with the largest norms (Appendix H
  found the top 60% salient for most samples).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SALIENT_RULES = ("tau", "top")


def component_norms(components: Tensor) -> Tensor:
    """L2 norm of every component, ``(2**n,)``."""
    return components.flatten(1).norm(dim=1)


def select_salient(
    components: Tensor, scale: float, rule: str = "tau", tau: float = 0.05, top: float = 0.6
) -> Tensor:
    """Bitmasks of the salient components, sorted by decreasing norm.

    Args:
        components: ``(2**n, *feature_shape)``, row 0 zero.
        scale: ``||f - f0||_2`` (the "tau" rule is relative to it).
    """
    norms = component_norms(components)
    order = torch.argsort(norms, descending=True, stable=True)
    order = order[order != 0]
    if rule == "tau":
        if not tau >= 0:
            msg = f"salient tau {tau} must be >= 0 (a fraction of ||f - f0||)"
            raise ValueError(msg)
        return order[norms[order] > tau * scale]
    if rule == "top":
        if not 0 < top <= 1:
            msg = f"salient top ratio {top} must be in (0, 1], e.g. 0.6"
            raise ValueError(msg)
        nonzero = order[norms[order] > 0]
        return nonzero[: math.ceil(top * len(nonzero))]
    msg = f"salient rule {rule!r} is not one of {list(SALIENT_RULES)}"
    raise ValueError(msg)
