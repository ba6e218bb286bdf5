"""OR-structured minimal features, and the receptive-field reference (docs/method.md, "Beyond
the paper: structured minimal features").

The paper solves every ``u(S)`` alone; where the L1 optimum is not unique, neighbouring subsets
pick inconsistent solutions and Eq. 10 turns that into high-order noise. Here every minimal
feature comes from one set of unknowns ``beta`` ``(n, *shape)`` in [0, 1], row i for player i::

    u(S) = f0 + alpha(S) * (f - f0),   alpha(S) = 1 - prod_{i in S} (1 - beta_i)

so ``u(empty) = f0`` and the OR components are closed-form,
``Delta f_T = (f - f0) * prod_{i in T} beta_i * prod_{j not in T} (1 - beta_j)``: universal
matching holds by construction. ``beta_i`` is held at 0 wherever player i is outside the reach
set of the number (:mod:`regprim.solvers.problem.reach`), at every step.

The objective (:mod:`regprim.solvers.or_objective`) is the paper's Eq. 8 averaged over subsets,
plus an exclusivity term; where each cell's pixels render from a crop of the feature, each
step's sample of it is drawn per cell (:class:`~regprim.solvers.or_objective.CellGame`, about a
quarter of the passes of a sample of whole subsets). Projected Adam with a cosine step
minimises it, from ``beta = or_init`` on the reach sets (a start at exactly 1 has no gradient
through the product), and values within ``or_snap`` of a bound are set to it at the end
(:func:`snap`).

``reach`` is the receptive-field reference: ``beta_i = 1`` exactly on each number's reach set.
Every subset is reconstructed exactly (the numbers that do not reach S cannot change its
pixels), with no optimisation; it is the structure the other solvers are compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from regprim.config import DENSE_MAX_N, SolverConfig, solver_settings
from regprim.core.adam import Adam, cosine
from regprim.solvers.base import DenseResult, MinimalFeatures
from regprim.solvers.or_objective import (
    CellGame,
    all_subsets,
    alpha_of,
    beta_residual,
    exclusivity,
    reconstruction,
    sample_subsets,
    singles,
    singles_per_step,
    size_weights,
    sparsity,
    to_bitmasks,
)
from regprim.solvers.problem.objective import CHECK_PASS, Objective
from regprim.solvers.whole_grid import HELDOUT, finish_compact

# Two regimes, measured (docs/method-choices.md, "Converged at the defaults"). With every
# subset in every step (n <= 5 at the default batch) the gradient is the objective's own: the
# true derivative also at beta = 1 (alpha_of's ``exact``), so that a needed number stays at its
# bound, and Adam's second moment with a short memory (0.9), which follows the curvature as
# beta settles: faces-ddim n = 4 reached a KKT residual of 0.09 instead of 0.61, dcgan-faces
# n = 4 0.14 instead of 0.24 with a 14% lower objective. With sampled subsets the gradient
# at beta = 1 left to the sparsity term and a long memory (0.99) averaging the batches' noise
# kept Fig. 6 at 0.062 on faces-ddim n = 9 and 0.039 on dcgan-faces block2, where the exact
# gradient gave 0.166 and 0.078.
EXACT_BETA2, SAMPLED_BETA2 = 0.9, 0.99


def step_draws(
    cfg: SolverConfig,
    n: int,
    weights: Tensor,
    everything: Tensor | None,
    game: CellGame | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Every step's subsets (``everything`` when given, else a batch drawn from ``weights``) and
    the players whose exclusivity it scores (None without the term), or with ``game`` its rows
    of cell renders (:meth:`CellGame.draw`, every player's exclusivity), from two seeded
    samplers: the one sequence a solve and its resume both follow."""
    rng = torch.Generator().manual_seed(cfg.perturb_seed)
    single_rng = torch.Generator().manual_seed(cfg.perturb_seed + 1)
    while True:
        if game is not None:
            yield game.draw(cfg.or_cell_rows, rng), None
            continue
        bits = (
            everything if everything is not None else sample_subsets(n, cfg.or_batch, weights, rng)
        )
        players = singles(n, cfg.or_batch, single_rng) if cfg.or_exclusive else None
        yield bits, players


def cell_game(obj: Objective, weights: Tensor, full: bool) -> CellGame | None:
    """The game per cell, where a solve plays it: sampled steps (not every subset each step),
    n <= 12, ``or_cell_rows`` > 0, a generator whose cells render from crops, and a step of
    crops that renders fewer positions than a step of whole subsets."""
    cfg, n = obj.cfg, obj.n
    if full or n > DENSE_MAX_N or not cfg.or_cell_rows or obj.cells is None:
        return None
    whole = cfg.or_batch + (singles_per_step(n, cfg.or_batch) if cfg.or_exclusive else 0)
    if n * (cfg.or_cell_rows + bool(cfg.or_exclusive)) * obj.cells.share >= whole:
        return None
    return CellGame(obj, weights)


def step_loss(
    obj: Objective,
    beta: Tensor,
    bits: Tensor,
    players: Tensor | None,
    weights: Tensor,
    full: bool,
    game: CellGame | None,
) -> Tensor:
    """One step's objective (:func:`step_draws`' draw): the sampled reconstruction and
    exclusivity terms, per cell with ``game`` (``bits``: each cell's rows), plus the exact
    sparsity term."""
    if game is not None:
        return game.sampled(beta, bits, full) + sparsity(obj, beta)
    loss = reconstruction(obj, beta, bits, weights, full, full) + sparsity(obj, beta)
    if players is not None:
        loss = loss + exclusivity(obj, beta, players, full)
    return loss


def start_state(cfg: SolverConfig, reach: Tensor) -> dict[str, Tensor]:
    """The solver's state before its first step: ``beta = or_init`` on the reach sets (times a
    seeded jitter for stability studies), zero Adam moments, step 0."""
    start = cfg.or_init * reach
    if cfg.init_jitter:  # perturbed start, for stability studies
        jitter = torch.Generator().manual_seed(cfg.perturb_seed)
        start = start * (1 - cfg.init_jitter * torch.rand(start.shape, generator=jitter)).to(start)
    return {
        "beta": start,
        "m": torch.zeros_like(reach),
        "v": torch.zeros_like(reach),
        "step": torch.zeros((), dtype=torch.int64),
    }


class ORSolver:
    """OR-structured minimal features (module docstring)."""

    name = "or"
    settings = solver_settings("or")  # read from the fields' metadata

    @staticmethod
    def memory_bytes(n: int, numel: int) -> int:
        """beta, its gradient and Adam moments, then the minimal features and components of
        every subset (2**n x D each, float32) when n <= 12, else the batch's passes and the
        component list (about 4096 components at most)."""
        every = 4 * 2**n if n <= DENSE_MAX_N else 4096
        return 4 * numel * (4 * n + every)

    @staticmethod
    def expected_passes(cfg: SolverConfig, n: int) -> float:
        """Forward-and-gradient passes: ``or_steps`` batches (and the exclusivity term's
        players, :func:`singles`), the KKT residual (every subset
        up to 12 players, else 16 batches) and the constraint check (every subset, or the
        held-out ones), forward-only passes counted as 0.56. The whole grid is sampled, never
        enumerated, and so is this estimate. A game played per cell counts its steps in the
        same units: :meth:`seconds_per_pass` times one of its steps per pass of a whole-subset
        step, so that passes times seconds is its time."""
        subsets = 2**n - 1
        batch = min(cfg.or_batch, subsets)
        if cfg.or_exclusive:  # the players whose exclusivity each step scores
            batch += singles_per_step(n, cfg.or_batch)
        residual = subsets if n <= DENSE_MAX_N else 16 * cfg.or_batch
        residual += n if cfg.or_exclusive else 0  # the exclusivity term on every player
        checked = subsets if n <= DENSE_MAX_N else HELDOUT
        return cfg.or_steps * batch + residual + CHECK_PASS * checked

    @staticmethod
    def seconds_per_pass(obj: Objective) -> float:
        """One step of the solve (a batch's passes, or a game per cell's crops, the sparsity
        term, both gradients), timed here, per pass of :meth:`expected_passes`' step: the
        solve's other work counted in its passes."""
        cfg, n = obj.cfg, obj.n
        weights = size_weights(n, cfg.subset_weights)
        full = 2**n - 1 <= cfg.or_batch
        game = cell_game(obj, weights, full)
        draws = step_draws(cfg, n, weights, all_subsets(n) if full else None, game)
        bits, players = next(draws)
        beta = (cfg.or_init * obj.reach_sets.to(obj.f0.dtype)).requires_grad_(True)
        start = time.perf_counter()
        for _ in range(2):
            loss = step_loss(obj, beta, bits, players, weights, full, game)
            torch.autograd.grad(loss, beta)
        per_step = min(cfg.or_batch, 2**n - 1)
        if cfg.or_exclusive:
            per_step += singles_per_step(n, cfg.or_batch)
        return (time.perf_counter() - start) / (2 * per_step)

    @staticmethod
    def convergence_note(cfg: SolverConfig, summary: dict) -> str:
        return (
            f"the OR-structured solve ended after or_steps={cfg.or_steps} with a KKT residual "
            f"of beta of {summary['residual_max']:.2g} (converged below or_gtol={cfg.or_gtol}); "
            "raise --or-steps to go further (docs/method-choices.md)"
        )

    @staticmethod
    def solve(
        obj: Objective,
        resume: dict[str, Tensor] | None = None,
        on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
        progress: bool = True,
    ) -> MinimalFeatures:
        cfg = obj.cfg
        n, reach = obj.n, obj.reach_sets.to(obj.f0.dtype)
        weights = size_weights(n, cfg.subset_weights)
        state = resume or start_state(cfg, reach)
        beta = state["beta"].clone()
        steps = cfg.or_steps
        everything = all_subsets(n) if 2**n - 1 <= cfg.or_batch else None
        full = everything is not None
        game = cell_game(obj, weights, full)
        opt = Adam(beta, beta2=EXACT_BETA2 if full else SAMPLED_BETA2)
        opt.m, opt.v = state["m"].clone(), state["v"].clone()
        done = int(state["step"])
        compact = n > DENSE_MAX_N
        seen: set[int] = set()  # subsets sampled in a compact run (its held-out checks avoid them)
        draws = step_draws(cfg, n, weights, everything, game)
        for _ in range(done):  # replay the samplers to where an interrupted run stopped
            bits, _ = next(draws)
            if compact:
                seen.update(to_bitmasks(bits).tolist())
        bar = tqdm(
            total=steps, initial=done, desc="OR-structured beta", unit="step", disable=not progress
        )
        for t in range(done + 1, steps + 1):
            bits, players = next(draws)
            if compact:
                seen.update(to_bitmasks(bits).tolist())
            beta.requires_grad_(True)
            loss = step_loss(obj, beta, bits, players, weights, full, game)
            (grad,) = torch.autograd.grad(loss, beta)
            with torch.no_grad():
                beta.requires_grad_(False)
                opt.step(beta, grad, t, cosine(cfg.or_lr, t, steps)).clamp_(0, 1).mul_(reach)
            bar.update(1)
            if on_chunk:
                on_chunk({"beta": beta, "m": opt.m, "v": opt.v, "step": torch.tensor(t)})
        bar.close()
        batch = len(everything) if full else cfg.or_batch
        if game is not None:  # a cell render is the share of a pass that its pixels are
            batch = n * (cfg.or_cell_rows + bool(cfg.or_exclusive)) * obj.cells.share
        residual = beta_residual(obj, beta.detach(), weights, cfg.or_batch, full, game)
        snapped = snap(beta.detach(), cfg.or_snap)
        passes = steps * batch / (2**n - 1)
        if compact:
            return finish_compact(obj, snapped, steps, passes, residual, seen)
        return finish(obj, snapped, steps, passes, residual, residual < cfg.or_gtol)


def snap(beta: Tensor, within: float) -> Tensor:
    """Clear 0/1 decisions: every beta within ``within`` of a bound is set to that bound (the
    optimum holds a needed number just inside 1, by the L1 slope over lambda; left there, its
    1 - beta leaks into components of the subsets of its players)."""
    return torch.where(beta < within, 0.0, torch.where(beta > 1 - within, 1.0, beta))


class ReachSolver:
    """The receptive-field reference: ``beta_i = 1`` on each number's reach set."""

    name = "reach"
    settings = solver_settings("reach")

    @staticmethod
    def memory_bytes(n: int, numel: int) -> int:
        return 4 * numel * (n + 4 * 2**n)

    @staticmethod
    def expected_passes(cfg: SolverConfig, n: int) -> float:
        """No optimisation: the constraint check of every subset only."""
        return CHECK_PASS * (2**n - 1)

    @staticmethod
    def seconds_per_pass(obj: Objective) -> float:
        return obj.seconds_per_pass()

    @staticmethod
    def convergence_note(cfg: SolverConfig, summary: dict) -> str:
        return "the reach reference solves nothing; it cannot fail to converge"

    @staticmethod
    def solve(obj, resume=None, on_chunk=None, progress=True) -> DenseResult:
        return finish(obj, obj.reach_sets.to(obj.f0.dtype), 0, 0.0, 0.0, True)


def finish(
    obj: Objective, beta: Tensor, steps: int, passes: float, residual: float, converged: bool
) -> DenseResult:
    """Minimal features of every subset from ``beta`` (window size), checked against the
    constraint; per-subset diagnostics are the run's (one optimisation serves all subsets:
    ``passes`` per subset on average, one KKT residual of beta)."""
    n = obj.n
    size = 2**n
    bits = torch.cat([torch.zeros(1, n, dtype=torch.bool), all_subsets(n)])
    alpha = torch.cat(
        [alpha_of(beta, bits[i : i + 256].to(beta.device)) for i in range(0, size, 256)]
    )
    alpha = obj.expand(alpha)
    alpha[0] = 0  # u(empty) = f0, also outside the window
    u = obj.features(alpha, full=True)
    rel, value = obj.check_all(u)
    return DenseResult(
        u=u,
        rel_error=rel,
        meets=rel < obj.cfg.constraint,
        passes=torch.full((size,), passes),
        chunk=obj.cfg.or_batch,
        objective=obj,
        value=value,
        forward_passes=torch.ones(size),  # the constraint check
        steps=torch.full((size,), steps, dtype=torch.int32),
        residual=torch.full((size,), residual),
        converged=torch.full((size,), converged, dtype=torch.bool),
        beta=obj.expand(beta),
    )
