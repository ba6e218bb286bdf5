"""Batched projected L-BFGS for box-constrained problems ``min F(alpha), alpha in [0, 1]^D``.

Every row of the batch is its own problem (one subset S per row): its own free set, curvature
history, line search and stopping test, so converged rows leave the batch and cost nothing more.

- **Direction**: the L-BFGS two-loop recursion on the free numbers (those not held at a bound
  by their gradient), with the initial inverse Hessian ``1 / D``, ``D`` a Gauss-Newton diagonal
  estimated by Hutchinson probes (the reconstruction term's curvature is ~1e6 times the L1
  slope, so unscaled first steps are useless; docs/method.md). A direction that is not a descent
  direction after projection is replaced by the scaled projected gradient ``-g / D``.
- **Step**: Armijo backtracking along the projected path ``clip(alpha + t d, 0, 1)``, starting
  from the row's last accepted step (1 at first); each trial is evaluated with its gradient, so
  the accepted one costs nothing more. (Starting from twice the last step, or keeping 6 or 20
  pairs of history instead of 12, cost more passes per unit of objective on dcgan-faces.)
- **Stop** (as scipy's L-BFGS-B): the relative objective decrease of the last step is below
  ``ftol``, or the KKT residual (below) is below ``gtol``: *converged*; no acceptable step
  along a descent direction (float precision reached): *converged*; ``max_steps`` steps:
  *capped*.

KKT residual (:func:`kkt_residual`): the RMS of the projected diagonal-Newton step, in units of
alpha: 0 at a stationary point of the box-constrained problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# F and its gradient for rows ``idx`` at ``alpha`` (those rows)
ValueGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class Result:
    """Per row: the solution and how it was reached."""

    alpha: Tensor
    value: Tensor
    residual: Tensor
    steps: Tensor
    passes: Tensor  # forward + input-gradient passes
    forward_passes: Tensor  # forward-only passes (line search), about 0.56 of a pass each
    converged: Tensor


def _rows(x: Tensor, like: Tensor) -> Tensor:
    return x.view(-1, *[1] * (like.dim() - 1))


def _dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.dim()))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row dot product (summed in place: no copy of channels-last tensors)."""
    return (a * b).sum(dim=_dims(a))


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a, dim=_dims(a))


def kkt_residual(alpha: Tensor, grad: Tensor, live: Tensor, curvature: Tensor) -> Tensor:
    """Per row, the RMS over the live numbers of ``|alpha - clip(alpha - grad / D)|``: the step,
    in units of alpha, that a projected diagonal-Newton method would still take (0 at a KKT
    point; scale-free, and small for a number held just inside a bound by a steep
    reconstruction term, where the raw gradient is not)."""
    step = (alpha - (alpha - grad / curvature).clamp(0, 1)) * live
    count = live.expand_as(alpha).sum(dim=_dims(alpha)).clamp_min(1)
    return _norm(step) / count.sqrt()


def _direction(g: Tensor, free: Tensor, inv_d: Tensor, history: list) -> Tensor:
    """The two-loop recursion, initial inverse Hessian ``inv_d``, restricted to the free
    numbers at its ends (the fallback in :func:`projected_lbfgs` catches a non-descent one)."""
    q = g * free
    coefs = []
    for s, y, rho in reversed(history):
        a = _rows(rho * _dot(s, q), q)
        q.sub_(a * y)
        coefs.append(a)
    z = q.mul_(inv_d)
    for (s, y, rho), a in zip(history, reversed(coefs), strict=True):
        z.add_(s * (a - _rows(rho * _dot(y, z), z)))
    return z.mul_(free).neg_()


def _descent(alpha: Tensor, grad: Tensor, live: Tensor, inv_d: Tensor, history: list) -> Tensor:
    """The L-BFGS direction on the numbers free to move (live, not held at a bound by their
    gradient), or the scaled projected gradient for a row where that is not a descent."""
    held = ((alpha <= 0) & (grad > 0)) | ((alpha >= 1) & (grad < 0))
    free = live & ~held
    d = _direction(grad, free, inv_d, history)
    fallback = -grad * inv_d * free
    return torch.where(_rows(_dot(grad, d) >= 0, d), fallback, d)


def _pair(
    alpha: Tensor, new_alpha: Tensor, grad: Tensor, g_new: Tensor, moving: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The L-BFGS pair ``(s, y, rho)`` of the rows that moved (zero where a row did not move or
    its curvature ``s . y`` is not clearly positive)."""
    s = torch.zeros_like(alpha)
    y = torch.zeros_like(alpha)
    s[moving] = new_alpha[moving] - alpha[moving]
    y[moving] = g_new[moving] - grad[moving]
    sy = _dot(s, y)
    good = sy > 1e-10 * _norm(s) * _norm(y)
    rho = torch.where(good, 1 / sy.clamp_min(1e-30), torch.zeros_like(sy))
    return s * _rows(good, s), y * _rows(good, y), rho


def _backtrack(
    value_grad: ValueGrad,
    alpha: Tensor,
    d: Tensor,
    value_now: Tensor,
    grad: Tensor,
    t: Tensor,
    done: Tensor,
    passes: Tensor,
    c1: float,
    max_backtracks: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Armijo backtracking on the projected path, rows still running only (``t`` halves in place
    per rejected row, ``passes`` counts the trials); every trial is evaluated with its gradient,
    so an accepted one costs no extra pass. Returns the new alphas, values and gradients (the old
    ones where no trial was accepted) and which rows accepted one."""
    trial_ok = done.to(alpha.device).clone()
    new_alpha, v_new, g_new = alpha.clone(), value_now.clone(), grad.clone()
    for _ in range(max_backtracks):
        idx = torch.nonzero(~trial_ok).flatten()
        if not len(idx):
            break
        trial = (alpha[idx] + _rows(t[idx], d) * d[idx]).clamp(0, 1)
        trial_value, trial_grad = value_grad(trial, idx)
        passes[idx.cpu()] += 1
        decrease = _dot(grad[idx], trial - alpha[idx])
        ok = (decrease < 0) & (trial_value <= value_now[idx] + c1 * decrease)
        new_alpha[idx[ok]], v_new[idx[ok]], g_new[idx[ok]] = (
            trial[ok],
            trial_value[ok],
            trial_grad[ok],
        )
        trial_ok[idx[ok]] = True
        t[idx[~ok]] *= 0.5
    return new_alpha, v_new, g_new, trial_ok


def projected_lbfgs(
    value_grad: ValueGrad,
    alpha0: Tensor,
    live: Tensor,
    curvature: Tensor,
    ftol: float,
    gtol: float,
    max_steps: int,
    memory: int = 12,
    c1: float = 1e-4,
    max_backtracks: int = 30,
) -> Result:
    """Minimise every row of a batch over the box (module docstring).

    Args:
        alpha0: start ``(B, *shape)`` in the box.
        live: numbers that may move ``(B or 1, *shape)``; the others keep their start.
        curvature: Gauss-Newton diagonal ``(B, *shape)`` (positive).
    """
    batch = alpha0.shape[0]
    alpha = alpha0.clone()
    value_now, grad = value_grad(alpha, torch.arange(batch, device=alpha.device))
    inv_d, live = 1 / curvature, live.expand_as(alpha)
    passes = torch.ones(batch)
    steps = torch.zeros(batch, dtype=torch.int32)
    converged, done = torch.zeros(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool)
    last_t = torch.ones(batch, dtype=alpha.dtype, device=alpha.device)
    history: list[tuple[Tensor, Tensor, Tensor]] = []
    residual = kkt_residual(alpha, grad, live, curvature)
    change = torch.full((batch,), float("inf"), dtype=alpha.dtype, device=alpha.device)
    for _ in range(max_steps):
        now = ((residual < gtol) | (change < ftol)).cpu() & ~done
        converged |= now
        done |= now
        if done.all():
            break
        d = _descent(alpha, grad, live, inv_d, history)
        t = last_t.clone()
        new_alpha, v_new, g_new, trial_ok = _backtrack(
            value_grad, alpha, d, value_now, grad, t, done, passes, c1, max_backtracks
        )
        stalled = (~trial_ok).cpu() & ~done
        converged |= stalled  # no decrease left at float precision
        done |= stalled
        moving = torch.nonzero(~done).flatten().to(alpha.device)
        if not len(moving):
            break
        last_t[moving] = t[moving]
        steps[moving.cpu()] += 1
        history = [*history, _pair(alpha, new_alpha, grad, g_new, moving)][-memory:]
        change = torch.full_like(change, float("inf"))
        change[moving] = (value_now[moving] - v_new[moving]) / value_now[moving].abs().clamp_min(
            1e-30
        )
        alpha[moving], value_now[moving], grad[moving] = (
            x[moving] for x in (new_alpha, v_new, g_new)
        )
        residual = kkt_residual(alpha, grad, live, curvature)
    no_forward_only = torch.zeros(batch)  # every trial is evaluated with its gradient
    return Result(alpha, value_now, residual.cpu(), steps, passes, no_forward_only, converged)
