"""The paper's per-subset solver: each minimal feature ``u(S)`` solved alone (Eq. 8, Sec. 3.2).

Projected Adam on ``alpha`` with the step size decayed to zero by a cosine schedule (a constant
step never settles around the L1 term; METHOD.md). Adam's update is per element, so a chunk of
subsets optimised together gives the same result as one subset at a time.

- ``u(N)`` is solved first from ``alpha = 1`` (``full_steps`` steps); ``u(empty) = f0``.
- Then the subsets are solved level by level, by decreasing size. With ``warm_start="full"``
  (the paper) each starts from ``u(N)``; with ``"parent"`` (default) each starts from its parent
  ``S + {lowest missing player}``, solved one level earlier: the start is then one cell away
  from the answer, and neighbouring subsets settle on consistent solutions.
- Before the first step, one probe pass (:mod:`regprim.solvers.reach`) finds the numbers with no
  path to the pixels of S; they are set to the minimiser of the sparsity term and frozen there.
- The L1 gradient is analytic; only the reconstruction term goes through autograd. Convolutional
  features are kept channels-last. ``precision="bfloat16"`` runs the generator passes under
  autocast: about 1.6x faster on a CPU with AVX-512 bf16, but the image is then only known to
  ~3 digits, which lambda = 1e4 turns into visible noise in high-order components (measured in
  docs/method-choices.md), so float32 is the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from regprim.solvers.objective import MinimalFeatures, Objective


def adam_chunk(
    obj: Objective, subsets: Tensor, alpha0: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Projected Adam with a cosine step for one chunk; returns (alpha, relative errors).

    ``alpha0`` and the returned alpha have the full feature shape; inside, only the window is
    optimised (the rest has no path to the players' pixels).

    The loop is written to make few passes over the ``(B, D)`` state (they cost about a third
    of a step on a CPU): the gradient is taken with respect to u, the chain rule, the frozen
    numbers and the L1 gradient are folded into one ``addcmul``, and Adam's bias corrections
    into scalars.
    """
    cfg = obj.cfg
    fmt = obj.memory_format
    masks, weight = obj.masks(subsets)
    alpha0 = obj.crop(alpha0)
    live = obj.reach(alpha0, masks)
    alpha = torch.where(live, alpha0, obj.sparsity_minimiser()).contiguous(memory_format=fmt)
    f0 = obj.f0[None].contiguous(memory_format=fmt)
    df = obj.df[None].contiguous(memory_format=fmt)
    df_live = (df * live).contiguous(memory_format=fmt)  # zero: frozen numbers never move
    scale = 1 / obj.numel if cfg.reduction == "mean" else 1.0
    l1_delta = cfg.sparsity == "l1-delta"
    abs_live = df_live.abs().mul_(scale) if l1_delta else None
    m = torch.zeros_like(alpha)
    v = torch.zeros_like(alpha)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        u = torch.addcmul(f0, alpha, df).requires_grad_(True)
        with obj.autocast():
            images = obj.gen.g(u, obj.code)
        loss = (weight * obj.errors(images.float(), masks)).sum()
        (grad,) = torch.autograd.grad(loss, u)
        with torch.no_grad():
            if l1_delta:  # d/d alpha of [recon + sum alpha |df|] on live numbers
                grad = torch.addcmul(abs_live, grad, df_live)
            else:  # d/d alpha of [recon + sum |u|]
                grad = grad.add_(torch.sign(u), alpha=scale).mul_(df_live)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
            root = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * root)
            alpha.addcdiv_(m, denom, value=-lr * root / (1 - beta1**t)).clamp_(0, 1)
    rel = obj.relative_errors(obj.f0 + alpha * obj.df, masks)
    return obj.expand(alpha), rel


def subsets_of_size(n: int, k: int) -> list[int]:
    """Bitmasks with ``k`` of ``n`` bits set, increasing."""
    return [s for s in range(2**n) if s.bit_count() == k]


def lowest_missing_bit(subsets: Tensor, n: int) -> Tensor:
    """For each bitmask, the lowest bit (as a mask) that is not set; subsets must not be N."""
    missing = ~subsets & (2**n - 1)
    return missing & -missing


class PaperSolver:
    """Every subset solved alone, level by level (module docstring)."""

    name = "paper"

    @staticmethod
    def memory_bytes(n: int, numel: int) -> int:
        """Minimal features, solver alphas, components and one transform temporary."""
        return 4 * (2**n) * numel * 4

    @staticmethod
    def solve(
        obj: Objective,
        resume: dict[str, Tensor] | None = None,
        on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
        progress: bool = True,
    ) -> MinimalFeatures:
        """Solve ``u(S)`` for all ``2**n`` subsets.

        Args:
            resume: a partial state from an interrupted run (keys ``alpha``, ``rel_error``,
                ``solved``, ``passes``).
            on_chunk: called with the state after each chunk (for checkpoints).
        """
        cfg = obj.cfg
        n = obj.n
        size = 2**n
        f0 = obj.full_f0
        shape = f0.shape
        if resume is None:
            state = {
                "alpha": torch.zeros(size, *shape, dtype=f0.dtype, device=f0.device),
                "rel_error": torch.zeros(size, dtype=f0.dtype, device=f0.device),
                "solved": torch.zeros(size, dtype=torch.bool, device=f0.device),
                "passes": torch.zeros(size, dtype=torch.int32, device=f0.device),
            }
            state["solved"][0] = True
        else:
            state = {k: v.to(f0.device) for k, v in resume.items()}
        full = size - 1
        chunk = cfg.chunk or obj.auto_chunk()
        bar = tqdm(total=size - 1, desc="minimal features", unit="subset", disable=not progress)
        bar.update(int(state["solved"].sum()) - 1)
        ones = torch.ones(1, *shape, dtype=f0.dtype, device=f0.device)
        if cfg.init_jitter:  # perturbed start of u(N), for stability studies
            rng = torch.Generator().manual_seed(cfg.perturb_seed)
            ones = ones - cfg.init_jitter * torch.rand(ones.shape, generator=rng).to(ones.device)
        for level in range(n, 0, -1):
            todo = [s for s in subsets_of_size(n, level) if not state["solved"][s]]
            for start in range(0, len(todo), chunk):
                subsets = torch.tensor(todo[start : start + chunk])
                if level == n:
                    alpha0 = ones
                elif cfg.warm_start == "full":
                    alpha0 = state["alpha"][full].expand(len(subsets), *shape)
                else:  # "parent": S warm-starts from S plus its lowest missing player
                    alpha0 = state["alpha"][subsets | lowest_missing_bit(subsets, n)]
                steps = cfg.full_steps if level == n else cfg.steps
                alpha, rel = adam_chunk(obj, subsets, alpha0, steps)
                idx = subsets.to(f0.device)
                state["passes"][idx] = steps + 2  # + reach probe + final check
                state["alpha"][idx], state["rel_error"][idx] = alpha, rel
                state["solved"][idx] = True
                bar.update(len(subsets))
                if on_chunk:
                    on_chunk(state)
        bar.close()
        u = f0 + state["alpha"] * obj.full_df
        u[0] = f0
        rel = state["rel_error"]
        return MinimalFeatures(
            u=u,
            rel_error=rel,
            meets=rel < cfg.constraint,
            passes=state["passes"].cpu(),
            chunk=chunk,
            objective=obj,
        )
