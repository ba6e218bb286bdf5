"""The paper's per-subset solver: each minimal feature ``u(S)`` solved alone (Eq. 8, Sec. 3.2).

- ``u(N)`` is solved first from ``alpha = 1``; ``u(empty) = f0``.
- Then the subsets are solved level by level, by decreasing size. With ``warm_start="full"``
  (the paper) each starts from ``u(N)``; with ``"parent"`` (default) each starts from its parent
  ``S + {lowest missing player}``, solved one level earlier: the start is then one cell away
  from the answer, and neighbouring subsets settle on consistent solutions.
- Numbers with no path to the pixels of S (:mod:`regprim.solvers.problem.reach`) are held at the
  minimiser of the sparsity term.
- ``optimizer="lbfgs"`` (default): projected L-BFGS per subset until it converges (relative
  objective decrease below ``ftol`` or KKT residual below ``gtol``; :mod:`regprim.solvers.lbfgs`)
  or reaches ``max_steps``. ``optimizer="adam"``: projected Adam with a cosine step schedule for
  a fixed ``steps`` (the solver of regprim 0.1; docs/method-choices.md compares the two).
- Subsets are optimised in chunks (``chunk`` at a time); every subset keeps its own state, so
  chunking does not change the problem.
- The L1 gradient is analytic; only the reconstruction term goes through autograd. Convolutional
  features are kept channels-last. ``precision="bfloat16"`` runs the generator passes under
  autocast (faster on some hardware, but lambda = 1e4 turns its ~3 digits into visible noise in
  high-order components; docs/method-choices.md), so float32 is the default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from regprim.config import SolverConfig, solver_settings
from regprim.core.adam import Adam, cosine
from regprim.solvers.base import DenseResult
from regprim.solvers.lbfgs import Result, kkt_residual, projected_lbfgs
from regprim.solvers.problem.objective import CHECK_PASS, Objective
from regprim.solvers.problem.reach import live_for

HUTCHINSON_PROBES = 2


class Chunk:
    """Eq. 8 for a batch of subsets: value and gradient in alpha of rows ``idx``."""

    def __init__(self, obj: Objective, subsets: Tensor) -> None:
        self.obj = obj
        fmt = obj.memory_format
        self.masks, self.weight = obj.masks(subsets)
        self.live = live_for(obj.reach_bits, subsets)
        self.live_weight = self.live.to(obj.df.dtype)  # 1 on the live numbers, else 0
        self.df_live = (obj.df[None] * self.live).contiguous(memory_format=fmt)
        self.scale = obj.l1_scale
        self.slope = self.df_live.abs().mul_(self.scale)  # d/d alpha of ||u - f0||_1
        self.l1_delta = obj.cfg.sparsity == "l1-delta"

    def start(self, alpha0: Tensor) -> Tensor:
        """Window alphas from full-size ``alpha0``; numbers without a path at the minimiser."""
        alpha0 = self.obj.crop(alpha0)
        held = self.obj.sparsity_minimiser()
        return torch.where(self.live, alpha0, held).contiguous(memory_format=self.obj.memory_format)

    @staticmethod
    def rows(t: Tensor, idx: Tensor) -> Tensor:
        """Rows ``idx`` of a per-subset tensor (itself, not a copy, when all rows are asked)."""
        return t if len(idx) == len(t) else t[idx]

    def sparsity(self, alpha: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The sparsity term and its gradient in alpha (live numbers)."""
        dims = tuple(range(1, alpha.dim()))
        if self.l1_delta:
            slope = self.rows(self.slope, idx)
            return (alpha * slope).sum(dim=dims), slope
        u = self.obj.features(alpha)
        value = u.abs().sum(dim=dims) * self.scale
        return value, torch.sign(u) * self.rows(self.df_live, idx) * self.scale

    def value_grad(self, alpha: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        obj = self.obj
        alpha = alpha.detach().requires_grad_(True)
        rows = self.rows
        rec = rows(self.weight, idx) * obj.errors(obj.render(alpha), rows(self.masks, idx))
        (grad,) = torch.autograd.grad(rec.sum(), alpha)
        with torch.no_grad():
            l1, l1_grad = self.sparsity(alpha, idx)
            return rec.detach() + l1, torch.addcmul(l1_grad, grad, rows(self.live_weight, idx))

    def curvature(self, alpha: Tensor, probes: int = HUTCHINSON_PROBES) -> Tensor:
        """Gauss-Newton diagonal ``2 w diag(J^T J)`` by Hutchinson probes (random signs on the
        masked pixels), floored at 1e-6 of each row's largest."""
        rng = torch.Generator(device=alpha.device).manual_seed(0)
        alpha = alpha.detach().requires_grad_(True)
        images = self.obj.render(alpha)
        total = torch.zeros_like(alpha)
        for k in range(probes):
            signs = torch.randint(0, 2, images.shape, generator=rng, device=images.device)
            v = (2 * signs - 1).to(images.dtype) * self.masks
            (grad,) = torch.autograd.grad(images, alpha, v, retain_graph=k < probes - 1)
            total += (grad * self.live_weight) ** 2
        d = 2 * self.weight.view(-1, *[1] * (alpha.dim() - 1)) * total / probes
        floor = 1e-6 * d.flatten(1).amax(1).clamp_min(1e-12)
        return d + floor.view(-1, *[1] * (alpha.dim() - 1))


def adam(chunk: Chunk, alpha: Tensor, steps: int, lr: float) -> Result:
    """Projected Adam with a cosine step from ``lr`` to zero for exactly ``steps`` steps."""
    every = torch.arange(alpha.shape[0], device=alpha.device)
    opt = Adam(alpha)
    for t in range(1, steps + 1):
        _, grad = chunk.value_grad(alpha, every)
        opt.step(alpha, grad, t, cosine(lr, t, steps)).clamp_(0, 1)
    value, grad = chunk.value_grad(alpha, every)
    batch = len(every)
    return Result(
        alpha=alpha,
        value=value,
        residual=kkt_residual(alpha, grad, chunk.live, chunk.curvature(alpha)).cpu(),
        steps=torch.full((batch,), steps, dtype=torch.int32),
        passes=torch.full((batch,), float(steps + 1 + HUTCHINSON_PROBES)),
        forward_passes=torch.zeros(batch),
        converged=torch.zeros(batch, dtype=torch.bool),
    )


def optimise(obj: Objective, subsets: Tensor, alpha0: Tensor, first: bool) -> tuple[Tensor, Result]:
    """One chunk from full-size ``alpha0``: full-size alphas and the optimiser's result (with
    ``passes`` including the curvature probes and the final relative-error check)."""
    cfg = obj.cfg
    chunk = Chunk(obj, subsets)
    alpha = chunk.start(alpha0)
    if cfg.optimizer == "adam":
        result = adam(chunk, alpha, cfg.full_steps if first else cfg.steps, cfg.lr)
        result.converged = result.residual < cfg.gtol
        extra = 1  # the final relative-error check
    else:
        result = projected_lbfgs(
            chunk.value_grad,
            alpha,
            chunk.live,
            chunk.curvature(alpha),
            cfg.ftol,
            cfg.gtol,
            cfg.max_steps,
        )
        extra = 1 + HUTCHINSON_PROBES  # the final check and the curvature probes
    result.passes += extra
    return obj.expand(result.alpha), result


def subsets_of_size(n: int, k: int) -> list[int]:
    """Bitmasks with ``k`` of ``n`` bits set, increasing."""
    return [s for s in range(2**n) if s.bit_count() == k]


def lowest_missing_bit(subsets: Tensor, n: int) -> Tensor:
    """For each bitmask, the lowest bit (as a mask) that is not set; subsets must not be N."""
    missing = ~subsets & (2**n - 1)
    return missing & -missing


LBFGS_PASSES_PER_SUBSET = 40.0  # measured mean on dcgan-faces (docs/performance.md)


class PaperSolver:
    """Every subset solved alone, level by level (module docstring)."""

    name = "paper"
    settings = solver_settings("paper")  # read from the fields' metadata

    @staticmethod
    def memory_bytes(n: int, numel: int) -> int:
        """Minimal features, solver alphas, components and one transform temporary."""
        return 4 * (2**n) * numel * 4

    @staticmethod
    def expected_passes(cfg: SolverConfig, n: int) -> float:
        """Forward-and-gradient passes (forward-only ones as 0.56): per subset, Adam's fixed
        steps, or L-BFGS's measured mean of 40 (docs/performance.md), then the check."""
        subsets = 2**n - 1
        if cfg.optimizer == "adam":
            solve = cfg.full_steps + 3 + (subsets - 1) * (cfg.steps + 3)
        else:
            solve = subsets * LBFGS_PASSES_PER_SUBSET
        return solve + CHECK_PASS * subsets

    @staticmethod
    def seconds_per_pass(obj: Objective) -> float:
        return obj.seconds_per_pass(obj.cfg.chunk or 32)

    @staticmethod
    def convergence_note(cfg: SolverConfig, summary: dict) -> str:
        capped = len(summary["subsets_capped"])
        return (
            f"{capped} of {2 ** summary['n'] - 1} subsets reached the step cap "
            f"(max_steps={cfg.max_steps}) before converging; worst KKT residual "
            f"{summary['residual_max']:.2g} (median {summary['residual_median']:.2g}); raise "
            "--max-steps or loosen --ftol/--gtol to change that (docs/method-choices.md)"
        )

    @staticmethod
    def solve(
        obj: Objective,
        resume: dict[str, Tensor] | None = None,
        on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
        progress: bool = True,
    ) -> DenseResult:
        """Solve ``u(S)`` for all ``2**n`` subsets.

        Args:
            resume: a partial state from an interrupted run (see :func:`new_state`).
            on_chunk: called with the state after each chunk (for checkpoints).
        """
        cfg = obj.cfg
        n = obj.n
        size = 2**n
        shape, device = obj.feature_shape, obj.f0.device
        if resume is None:
            state = new_state(size, shape, device)
        else:
            state = {k: v.to(device) for k, v in resume.items()}
        full = size - 1
        chunk = cfg.chunk or obj.auto_chunk()
        # u(N) alone first (it starts from alpha = 1 and costs several subsets' worth), then a
        # bar over the other subsets, so that each bar's rate and ETA are honest
        bar = tqdm(total=1, desc="u(N)", unit="subset", disable=not progress)
        bar.update(int(state["solved"][full]))
        ones = torch.ones(1, *shape, dtype=obj.f0.dtype, device=device)
        if cfg.init_jitter:  # perturbed start of u(N), for stability studies
            rng = torch.Generator().manual_seed(cfg.perturb_seed)
            ones = ones - cfg.init_jitter * torch.rand(ones.shape, generator=rng).to(ones.device)
        for level in range(n, 0, -1):
            if level == n - 1:
                bar.close()
                done = int(state["solved"].sum()) - 2
                bar = tqdm(
                    total=size - 2,
                    initial=done,
                    desc="other subsets",
                    unit="subset",
                    disable=not progress or size < 3,
                )
            todo = [s for s in subsets_of_size(n, level) if not state["solved"][s]]
            for start in range(0, len(todo), chunk):
                subsets = torch.tensor(todo[start : start + chunk])
                if level == n:
                    alpha0 = ones
                elif cfg.warm_start == "full":
                    alpha0 = state["alpha"][full].expand(len(subsets), *shape)
                else:  # "parent": S warm-starts from S plus its lowest missing player
                    alpha0 = state["alpha"][subsets | lowest_missing_bit(subsets, n)]
                alpha, result = optimise(obj, subsets, alpha0, level == n)
                record(obj, state, subsets, alpha, result)
                bar.update(len(subsets))
                if on_chunk:
                    on_chunk(state)
        bar.close()
        return minimal_features(obj, state, chunk)


def record(
    obj: Objective, state: dict[str, Tensor], subsets: Tensor, alpha: Tensor, result
) -> None:
    """Put a solved chunk into ``state``: its alphas, the constraint check and diagnostics."""
    idx = subsets.to(state["alpha"].device)
    state["rel_error"][idx], state["value"][idx] = obj.check(obj.features(obj.crop(alpha)), subsets)
    state["alpha"][idx] = alpha
    for key in ("passes", "forward_passes", "steps", "residual", "converged"):
        state[key][idx] = getattr(result, key).to(state[key].dtype).to(idx.device)
    state["solved"][idx] = True


def minimal_features(obj: Objective, state: dict[str, Tensor], chunk: int) -> DenseResult:
    """The finished state as a :class:`DenseResult` (``u`` of every subset, ``u[0] = f0``)."""
    u = obj.features(state["alpha"], full=True)  # alpha of the empty set: 0, never solved
    rel = state["rel_error"]
    forward = state["forward_passes"].cpu() + 1  # the line searches and the final check
    forward[0] = 0  # the empty set is f0 by definition
    return DenseResult(
        u=u,
        rel_error=rel,
        meets=rel < obj.cfg.constraint,
        passes=state["passes"].cpu(),
        chunk=chunk,
        objective=obj,
        value=state["value"],
        forward_passes=forward,
        steps=state["steps"].cpu(),
        residual=state["residual"].cpu(),
        converged=state["converged"].cpu(),
    )


def new_state(size: int, shape: torch.Size, device: torch.device) -> dict[str, Tensor]:
    """The solver state of a fresh run: nothing solved but the empty set."""
    state = {
        "alpha": torch.zeros(size, *shape, device=device),
        "rel_error": torch.zeros(size, device=device),
        "value": torch.zeros(size, device=device),
        "solved": torch.zeros(size, dtype=torch.bool, device=device),
        "passes": torch.zeros(size, device=device),
        "forward_passes": torch.zeros(size, device=device),
        "steps": torch.zeros(size, dtype=torch.int32, device=device),
        "residual": torch.zeros(size, device=device),
        "converged": torch.zeros(size, dtype=torch.bool, device=device),
    }
    state["solved"][0] = state["converged"][0] = True
    return state
