"""OR-structured minimal features, and the receptive-field reference (docs/method.md, "Beyond
the paper: structured minimal features").

The paper solves every ``u(S)`` alone; where the L1 optimum is not unique, neighbouring subsets
pick inconsistent solutions and Eq. 10 turns that into high-order noise. Here every minimal
feature comes from one set of unknowns ``beta`` ``(n, *shape)`` in [0, 1], row i for player i::

    u(S) = f0 + alpha(S) * (f - f0),   alpha(S) = 1 - prod_{i in S} (1 - beta_i)

so ``u(empty) = f0`` and the OR components are closed-form,
``Delta f_T = (f - f0) * prod_{i in T} beta_i * prod_{j not in T} (1 - beta_j)``: universal
matching holds by construction. ``beta_i`` is held at 0 wherever player i is outside the reach
set of the number (:mod:`regprim.solvers.reach`), at every step.

The objective is the paper's Eq. 8 averaged over subsets (``subset_weights``: ``subsets`` = every
subset alike, as the paper's sum over all of them; ``sizes`` = every subset size alike, then
every subset of that size alike, which keeps single cells in play for large n). Its sparsity
part is exact for any n: for one number with ``c_i = 1 - beta_i``, the mean over the subsets of
size k of ``prod_{i in S} c_i`` is ``e_k(c) / C(n, k)`` (``e_k`` the elementary symmetric
polynomial). Its reconstruction part is estimated on a batch of subsets drawn from the same
weights each step (all subsets, when there are no more than a batch). Projected Adam with a
cosine step minimises it, from ``beta = 0.5`` on the reach sets (a start at exactly 1 has no
gradient through the product), and values within ``or_snap`` of a bound are set to it at the end
(:func:`snap`).

``reach`` is the receptive-field reference: ``beta_i = 1`` exactly on each number's reach set.
Every subset is reconstructed exactly (the numbers that do not reach S cannot change its
pixels), with no optimisation; it is the structure the other solvers are compared with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from regprim.config import DENSE_MAX_N, SolverConfig
from regprim.solvers.adam import Adam, cosine
from regprim.solvers.objective import CHECK_PASS, MinimalFeatures, Objective

HELDOUT = 1000  # held-out subsets checked in a whole-grid run (regprim.solvers.whole_grid)


def alpha_of(beta: Tensor, bits: Tensor) -> Tensor:
    """``alpha(S) = 1 - prod_{i in S} (1 - beta_i)`` for every row of ``bits`` ``(B, n)``
    (bool): ``(B, *shape)``. The product is one matrix product in log space (a factor of
    exactly 0 is taken as 1e-30: alpha = 1 to float precision, and the gradient of that
    player's beta is 0 there, as the projection holds it at its bound anyway)."""
    log_keep = torch.log((1 - beta).clamp_min(1e-30)).flatten(1)  # (n, D)
    keep = torch.exp(bits.to(beta.dtype) @ log_keep)
    return (1 - keep).view(bits.shape[0], *beta.shape[1:])


def weight_rule(n: int, rule: str) -> str:
    """``subsets`` or ``sizes`` (``auto``: ``subsets`` up to 12 players)."""
    if rule == "auto":
        return "subsets" if n <= DENSE_MAX_N else "sizes"
    return rule


def size_weights(n: int, rule: str) -> Tensor:
    """Weight of each subset size 1..n in the objective, summing to 1: ``(n,)`` float64."""
    rule = weight_rule(n, rule)
    sizes = torch.arange(1, n + 1, dtype=torch.float64)
    if rule == "sizes":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    counts = torch.exp(
        torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(sizes + 1) - torch.lgamma(n - sizes + 1)
    )
    return counts / counts.sum()


def mean_alpha(beta: Tensor, rule: str, support: Tensor | None = None) -> Tensor:
    """Per number, the mean of ``alpha(S)`` over the non-empty subsets weighted by ``rule``
    (:func:`size_weights`), exactly, for any n: with ``c_i = 1 - beta_i``,

    - ``subsets``: ``2**n / (2**n - 1) * (1 - prod_i (1 - beta_i / 2))``, since the sum over all
      subsets of ``prod_{i in S} c_i`` is ``prod_i (1 + c_i)``;
    - ``sizes``: ``mean_k (1 - e_k(c) / C(n, k))`` with ``e_k`` the elementary symmetric
      polynomials (:func:`size_mean_of_products`).

    ``support`` (bool, like ``beta``): the players whose beta may be non-zero at each number
    (its reach set; beta is 0 elsewhere); it makes the ``sizes`` rule cost the square of the
    largest support instead of the square of n (n = 36: 81 ms -> a few ms a step).
    """
    n = beta.shape[0]
    if weight_rule(n, rule) == "subsets":
        return (1 - (1 - beta / 2).prod(dim=0)) * (2**n / (2**n - 1))
    return 1 - size_mean_of_products(1 - beta, support)


def size_mean_of_products(c: Tensor, support: Tensor | None = None) -> Tensor:
    """``mean_{k=1..n} e_k(c) / C(n, k)`` per number, for ``c`` ``(n, *shape)`` that is 1 outside
    ``support``. Outside the support each factor of ``prod_i (1 + c_i x)`` is ``(1 + x)``, so with
    the ``M`` players of the largest support gathered first (support players, then any others),
    ``e_k = sum_j q_j C(n - M, k - j)`` where ``q`` are the coefficients of the product over those
    ``M`` players: an ``O(M^2)`` recursion per number and a fixed table of weights."""
    n = c.shape[0]
    flat = c.flatten(1)
    if support is None:
        order, m = torch.arange(n, device=c.device)[:, None].expand(n, flat.shape[1]), n
    else:
        inside = support.flatten(1)
        m = max(int(inside.sum(0).max()), 1)
        order = torch.argsort((~inside).to(torch.int8), dim=0, stable=True)[:m]
    gathered = flat.gather(0, order)  # (m, D): each number's support players first
    q = torch.zeros(m + 1, flat.shape[1], dtype=c.dtype, device=c.device)
    q[0] = 1
    for i in range(m):
        q = torch.cat([q[:1], q[1:] + gathered[i] * q[:-1]])
    weights = [
        sum(math.comb(n - m, k - j) / math.comb(n, k) for k in range(max(j, 1), n + 1)) / n
        for j in range(m + 1)
    ]
    table = torch.tensor(weights, dtype=c.dtype, device=c.device)
    return (table[:, None] * q).sum(0).view(c.shape[1:])


def sample_subsets(n: int, batch: int, weights: Tensor, rng: torch.Generator) -> Tensor:
    """``batch`` subsets (bool ``(batch, n)``): a size from ``weights``, then its players
    uniformly."""
    sizes = torch.multinomial(weights.float(), batch, replacement=True, generator=rng) + 1
    ranks = torch.rand(batch, n, generator=rng).argsort(dim=1).argsort(dim=1)
    return ranks < sizes[:, None]


def all_subsets(n: int) -> Tensor:
    """Every non-empty subset as bool ``(2**n - 1, n)``, in bitmask order from 1."""
    masks = torch.arange(1, 2**n)
    return (masks[:, None] >> torch.arange(n)) & 1 == 1


def to_bitmasks(bits: Tensor) -> Tensor:
    return (bits.long() << torch.arange(bits.shape[1])).sum(1)


def reconstruction(
    obj: Objective, beta: Tensor, bits: Tensor, weights: Tensor, full: bool
) -> Tensor:
    """The reconstruction part of the OR objective on the subsets ``bits``: its exact share of
    the weighted mean when ``full`` (the rows are all the subsets), else the mean over a batch
    drawn from the weights (an unbiased estimate of the whole)."""
    n = obj.n
    alpha = alpha_of(beta, bits.to(beta.device))
    u = torch.addcmul(obj.f0[None], alpha, obj.df[None]).contiguous(memory_format=obj.memory_format)
    masks, weight = obj.masks(to_bitmasks(bits))
    with obj.autocast():
        images = obj.gen.g(u, obj.code)
    rec = weight * obj.errors(images.float(), masks)
    if not full:
        return rec.mean()
    sizes = bits.sum(1)
    counts = torch.tensor([math.comb(n, int(k)) for k in sizes], dtype=torch.float64)
    return (rec * (weights[sizes - 1] / counts).to(rec.dtype).to(rec.device)).sum()


def exclusivity(obj: Objective, beta: Tensor, players: Tensor) -> Tensor:
    """The exclusivity part of the OR objective on the single cells ``players`` (long).

    The components that do not cover player i sum to ``u(N) - u({i})``, so
    ``v_i = f0 + (1 - beta_i) * alpha(N \\ {i}) * (f - f0)`` is what Fig. 6 renders at p = 1; it
    should leave cell i as the baseline image has it. The term is ``or_exclusive`` times the
    reconstruction weight times ``||g(v_i) - g(f0)||^2`` on cell i, scaled by the mean over the
    players of the baseline's error per pixel over cell i's (a cell the baseline already nearly
    matches counts as much as any other, as in Fig. 6's ratio), averaged over ``players`` (an
    unbiased estimate of the mean over all of them when they are a sample). Zero exactly when
    the components that do not cover a cell change none of it."""
    others = torch.ones(len(players), obj.n, dtype=torch.bool)
    others[torch.arange(len(players)), players.cpu()] = False
    share = (1 - beta[players]) * alpha_of(beta, others.to(beta.device))
    v = torch.addcmul(obj.f0[None], share, obj.df[None]).contiguous(memory_format=obj.memory_format)
    masks, weight = obj.masks(1 << players.cpu())
    with obj.autocast():
        images = obj.gen.g(v, obj.code)
    change = ((images.float() - obj.baseline_image) ** 2 * masks).flatten(1).sum(1)
    base = obj.cell_baseline_errors()
    return obj.cfg.or_exclusive * (weight * change * base.mean() / base[players]).mean()


def singles_per_step(n: int, batch: int) -> int:
    """How many players' exclusivity one step scores: ``batch // 4`` (at least 1), at most n
    (8 of the 36 at the whole grid: 18 s against 25 s with 16, the same Fig. 6;
    docs/performance.md)."""
    return min(n, max(1, batch // 4))


def singles(n: int, batch: int, rng: torch.Generator) -> Tensor:
    """The players whose exclusivity one step scores (:func:`singles_per_step`): all of them,
    or that many drawn without replacement."""
    k = singles_per_step(n, batch)
    return torch.arange(n) if k == n else torch.randperm(n, generator=rng)[:k]


def sparsity(obj: Objective, beta: Tensor) -> Tensor:
    """The sparsity part of the OR objective, exact: the weighted mean of ``||u(S) - f0||_1``."""
    mean = mean_alpha(beta, obj.cfg.subset_weights, obj.reach_sets)
    return (mean * obj.df.abs()).sum() * obj.l1_scale


def beta_residual(obj: Objective, beta: Tensor, weights: Tensor, chunk: int) -> float:
    """KKT residual of ``beta`` on the whole objective: the norm of its projected gradient
    (zero where a bound holds a beta whose gradient pushes it against that bound, and outside
    the reach sets) over the norm of the sparsity term's gradient. Every subset when n <= 12,
    else 16 batches drawn from the weights."""
    n = obj.n
    full = n <= 12
    if full:
        groups = list(all_subsets(n).split(chunk))
    else:
        rng = torch.Generator().manual_seed(1)
        groups = [sample_subsets(n, chunk, weights, rng) for _ in range(16)]
    beta = beta.clone().requires_grad_(True)
    (l1,) = torch.autograd.grad(sparsity(obj, beta), beta)
    grad = l1.clone()
    for bits in groups:
        (g,) = torch.autograd.grad(reconstruction(obj, beta, bits, weights, full), beta)
        grad += g if full else g / len(groups)
    beta = beta.detach()
    held = ((beta <= 0) & (grad > 0)) | ((beta >= 1) & (grad < 0)) | ~obj.reach_sets
    return float(torch.where(held, 0.0, grad).norm() / l1.norm().clamp_min(1e-30))


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
    settings = (
        "lam",
        "or_steps",
        "or_batch",
        "or_lr",
        "or_init",
        "or_snap",
        "or_gtol",
        "subset_weights",
    )

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
        enumerated, and so is this estimate."""
        subsets = 2**n - 1
        batch = min(cfg.or_batch, subsets)
        if cfg.or_exclusive:  # the players whose exclusivity each step scores
            batch += singles_per_step(n, cfg.or_batch)
        residual = subsets if n <= DENSE_MAX_N else 16 * cfg.or_batch
        checked = subsets if n <= DENSE_MAX_N else HELDOUT
        return cfg.or_steps * batch + residual + CHECK_PASS * checked

    @staticmethod
    def seconds_per_pass(obj: Objective) -> float:
        """One step of the solve (a batch's passes, the sparsity term, both gradients), timed
        here, per subset of the batch: the solve's other work counted in its passes."""
        cfg, n = obj.cfg, obj.n
        weights = size_weights(n, cfg.subset_weights)
        full = 2**n - 1 <= cfg.or_batch
        bits = (
            all_subsets(n) if full else sample_subsets(n, cfg.or_batch, weights, torch.Generator())
        )
        beta = (cfg.or_init * obj.reach_sets.to(obj.f0.dtype)).requires_grad_(True)
        start = time.perf_counter()
        for _ in range(2):
            loss = reconstruction(obj, beta, bits, weights, full) + sparsity(obj, beta)
            torch.autograd.grad(loss, beta)
        return (time.perf_counter() - start) / (2 * len(bits))

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
        opt = Adam(beta, beta2=0.99)
        opt.m, opt.v = state["m"].clone(), state["v"].clone()
        steps = cfg.or_steps
        rng = torch.Generator().manual_seed(cfg.perturb_seed)
        single_rng = torch.Generator().manual_seed(cfg.perturb_seed + 1)
        everything = all_subsets(n) if 2**n - 1 <= cfg.or_batch else None
        full = everything is not None
        done = int(state["step"])
        compact = n > DENSE_MAX_N
        seen: set[int] = set()  # subsets sampled in a compact run (its held-out checks avoid them)
        for _ in range(done):  # replay the sampler to where an interrupted run stopped
            if not full:
                drawn = sample_subsets(n, cfg.or_batch, weights, rng)
                if compact:
                    seen.update(to_bitmasks(drawn).tolist())
        bar = tqdm(
            total=steps, initial=done, desc="OR-structured beta", unit="step", disable=not progress
        )
        for t in range(done + 1, steps + 1):
            bits = everything if full else sample_subsets(n, cfg.or_batch, weights, rng)
            if compact:
                seen.update(to_bitmasks(bits).tolist())
            beta.requires_grad_(True)
            loss = reconstruction(obj, beta, bits, weights, full) + sparsity(obj, beta)
            if cfg.or_exclusive:
                loss = loss + exclusivity(obj, beta, singles(n, cfg.or_batch, single_rng))
            (grad,) = torch.autograd.grad(loss, beta)
            with torch.no_grad():
                beta.requires_grad_(False)
                opt.step(beta, grad, t, cosine(cfg.or_lr, t, steps)).clamp_(0, 1).mul_(reach)
            bar.update(1)
            if on_chunk:
                on_chunk({"beta": beta, "m": opt.m, "v": opt.v, "step": torch.tensor(t)})
        bar.close()
        batch = len(everything) if full else cfg.or_batch
        residual = beta_residual(obj, beta.detach(), weights, cfg.or_batch)  # the optimum's
        snapped = snap(beta.detach(), cfg.or_snap)
        passes = steps * batch / (2**n - 1)
        if compact:
            from regprim.solvers.whole_grid import finish_compact  # it builds on this module

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
    settings: tuple[str, ...] = ()

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
    def solve(obj, resume=None, on_chunk=None, progress=True) -> MinimalFeatures:
        return finish(obj, obj.reach_sets.to(obj.f0.dtype), 0, 0.0, 0.0, True)


def finish(
    obj: Objective, beta: Tensor, steps: int, passes: float, residual: float, converged: bool
) -> MinimalFeatures:
    """Minimal features of every subset from ``beta`` (window size), checked against the
    constraint; per-subset diagnostics are the run's (one optimisation serves all subsets:
    ``passes`` per subset on average, one KKT residual of beta)."""
    n = obj.n
    size = 2**n
    bits = torch.cat([torch.zeros(1, n, dtype=torch.bool), all_subsets(n)])
    alpha = torch.cat(
        [alpha_of(beta, bits[i : i + 256].to(beta.device)) for i in range(0, size, 256)]
    )
    u = obj.full_f0 + obj.expand(alpha) * obj.full_df
    u[0] = obj.full_f0
    rel, value = obj.check_all(u)
    return MinimalFeatures(
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
