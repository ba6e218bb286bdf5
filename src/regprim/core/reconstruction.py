"""Reconstruction of target cells from feature components (Algorithm 2, Eq. 7).

For target cells ``S^`` (a bitmask): ``f^ = f0 + sum of the chosen components Delta f_k whose
action region S_k meets S^``; the image is ``g(f^)`` rendered with the target's code.

This module is the one implementation of Algorithm 2: :func:`selection` says which components
each target uses (optionally only the largest fraction ``p`` of them, or those that do *not*
meet the target, as Fig. 6 needs) and :func:`reconstruct_features` adds them to ``f0``, for a
whole batch of targets at once. The CLI, the metrics, the figures and the report's explorer all
go through it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def selection(masks: Tensor, targets: Tensor, ratio: float = 1.0, meeting: bool = True) -> Tensor:
    """Which components each target uses: bool ``(B, m)``.

    Args:
        masks: action regions ``(m,)`` of the candidate components, largest norm first.
        targets: target bitmasks ``(B,)``.
        ratio: keep the first ``ceil(ratio * count)`` of each target's candidates.
        meeting: candidates are the components whose action region meets the target (Eq. 7);
            with False, those that do not (Fig. 6).
    """
    meet = (targets.to(torch.long)[:, None] & masks.to(torch.long)[None, :]) != 0
    candidates = meet if meeting else ~meet
    rank = torch.cumsum(candidates, dim=1)
    count = candidates.sum(1, keepdim=True).to(torch.float64)
    keep = torch.ceil(ratio * count - 1e-9)
    return candidates & (rank <= keep)


def reconstruct_features(components: Tensor, f0: Tensor, chosen: Tensor) -> Tensor:
    """Algorithm 2 for a batch: ``f0 + chosen @ components``.

    Args:
        components: ``(m, *feature_shape)``, in the order of ``chosen``'s columns.
        chosen: ``(B, m)`` (bool or 0/1) rows of :func:`selection`.

    Returns:
        ``(B, *feature_shape)``.
    """
    flat = components.flatten(1)
    weights = chosen.to(flat.dtype).to(flat.device)
    return f0 + (weights @ flat).view(len(chosen), *f0.shape)
