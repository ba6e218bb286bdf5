"""Noise removal (Appendix G): small corrections to the minimal features that make the OR
components sparse.

Learn ``q_S in [-tau, tau]^D`` for every subset (``q_empty = 0``) and minimise
``sum_S ||I_or(S | u + q)||_1``. The objective is separable over the D numbers (one linear
program per number, 2**n variables each); here it is solved by projected Adam on q with a cosine
step (as the AND-OR interaction work solves its noise terms by projected SGD), vectorised over
blocks of 512 numbers that stay in the CPU caches for all their steps. The subgradient
``A^T sign(I_or(u + q))`` costs two butterflies: the OR transform and its transpose, the superset
Moebius transform, ``O(n 2**n D)`` each. ``tau`` is
``tau_rel * |u(N) - f0|`` per number: a correction never exceeds that fraction of the number's
own change from the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from regprim.core.adam import Adam, cosine
from regprim.core.interactions import or_interactions, or_transpose


@dataclass
class Denoised:
    """Denoised minimal features and what the correction changed."""

    u: Tensor
    components: Tensor
    l1_before: float
    l1_after: float
    tau_rel: float
    steps: int
    seconds: float


def remove_noise(
    u: Tensor,
    f0: Tensor,
    tau_rel: float = 0.04,
    steps: int = 100,
    lr: float = 0.1,
    block: int = 512,
) -> Denoised:
    """Appendix G on minimal features ``u`` ``(2**n, *feature_shape)``.

    Args:
        tau_rel: bound of the correction per number, relative to ``|u(N) - f0|``.
        steps: projected Adam steps (cosine schedule from ``lr * tau`` to zero).
        block: numbers optimised together. The problem is separable over numbers, so blocks
            that fit the CPU caches run all their steps before the next block starts.
    """
    if not 0 <= tau_rel < 1:
        msg = f"noise bound tau_rel={tau_rel} must be in [0, 1), e.g. 0.04"
        raise ValueError(msg)
    if steps < 1:
        msg = f"denoise steps={steps} must be at least 1"
        raise ValueError(msg)
    start = time.perf_counter()
    flat = u.reshape(u.shape[0], -1)
    tau = tau_rel * (flat[-1] - f0.reshape(-1)).abs()
    out = torch.empty_like(flat)
    for lo in range(0, flat.shape[1], block):
        cols = slice(lo, lo + block)
        out[:, cols] = _denoise_block(flat[:, cols].contiguous(), tau[cols], steps, lr)
    before = or_interactions(u)
    after = or_interactions(out.view_as(u))
    return Denoised(
        u=out.view_as(u),
        components=after,
        l1_before=float(before.abs().sum()),
        l1_after=float(after.abs().sum()),
        tau_rel=tau_rel,
        steps=steps,
        seconds=time.perf_counter() - start,
    )


def _denoise_block(u: Tensor, tau: Tensor, steps: int, lr: float) -> Tensor:
    """Projected Adam on q for a ``(2**n, b)`` block; returns ``u + q`` (or ``u`` if the
    correction did not lower the objective)."""
    q = torch.zeros_like(u)
    opt = Adam(u, eps=1e-12)
    for t in range(1, steps + 1):
        grad = or_transpose(torch.sign(or_interactions(u + q)))
        grad[0] = 0
        opt.step(q, grad, t, cosine(lr, t, steps), scale=tau)
        q = torch.maximum(torch.minimum(q, tau), -tau)
    if or_interactions(u + q).abs().sum() > or_interactions(u).abs().sum():
        return u
    return u + q
