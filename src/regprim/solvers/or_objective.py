"""The OR-structured objective: its three terms on ``beta`` (:mod:`regprim.solvers.or_structured`
solves it).

With ``alpha(S) = 1 - prod_{i in S} (1 - beta_i)`` and ``u(S) = f0 + alpha(S) * (f - f0)``:

- **sparsity** (exact for any n): the weighted mean over subsets of ``||u(S) - f0||_1``
  (``subset_weights``: ``subsets`` = every subset alike, as the paper's sum over all of them;
  ``sizes`` = every subset size alike, then every subset of that size alike, which keeps single
  cells in play for large n). For one number with ``c_i = 1 - beta_i``, the mean over the
  subsets of size k of ``prod_{i in S} c_i`` is ``e_k(c) / C(n, k)`` (``e_k`` the elementary
  symmetric polynomial);
- **reconstruction** (Eq. 8's masked error): estimated on a batch of subsets drawn from the same
  weights each step (all subsets, when there are no more than a batch);
- **exclusivity** (``or_exclusive``; docs/method.md, "Exclusivity"): what the components that
  do not cover cell i render must leave cell i as the baseline has it, scored on a few players
  each step.

:func:`beta_residual` is the KKT residual of a solution on the whole objective.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from regprim.config import DENSE_MAX_N
from regprim.solvers.objective import Objective


class _Keep(torch.autograd.Function):
    """``prod_{i in S} (1 - beta_i)`` for every row of ``bits`` and every number, by two
    matrix products in log space (the logs of the non-zero factors, and how many factors are
    exactly 0). Its gradient at a factor of exactly 0 (``beta_i = 1``), which a log cannot
    give: with ``exact``, the product of the other factors (the true derivative); without, 0
    (only the sparsity term then acts on that beta: it is pushed off its bound and pulled
    back; see :data:`regprim.solvers.or_structured.EXACT_BETA2` for when each is used)."""

    @staticmethod
    def forward(ctx, beta: Tensor, bits: Tensor, exact: bool) -> Tensor:
        flat = beta.flatten(1)
        zero = flat >= 1
        logs = torch.log(torch.where(zero, 1.0, 1 - flat))
        rows = bits.to(flat.dtype)
        others = torch.exp(rows @ logs)  # the product of the non-zero factors
        zeros = rows @ zero.to(flat.dtype)  # how many factors are 0
        ctx.save_for_backward(flat, zero, rows, others, zeros)
        ctx.shape, ctx.exact = beta.shape, exact
        return torch.where(zeros > 0, 0.0, others)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        flat, zero, rows, others, zeros = ctx.saved_tensors
        # d keep / d beta_i = -(the product of the row's other factors)
        free = rows.T @ (grad * others * (zeros == 0))  # rows without a zero: keep / (1 - b_i)
        d = free / torch.where(zero, 1.0, 1 - flat)
        if ctx.exact:  # rows whose one zero factor is beta_i's: the others' product
            lone = rows.T @ (grad * others * (zeros == 1))
            d = torch.where(zero, lone, d)
        else:
            d = torch.where(zero, 0.0, d)
        return -d.view(ctx.shape), None, None


def alpha_of(beta: Tensor, bits: Tensor, exact: bool = True) -> Tensor:
    """``alpha(S) = 1 - prod_{i in S} (1 - beta_i)`` for every row of ``bits`` ``(B, n)``
    (bool): ``(B, *shape)``, by :class:`_Keep` (``exact``: the true gradient also at
    ``beta_i = 1``)."""
    keep = _Keep.apply(beta, bits, exact)
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


def mean_alpha(beta: Tensor, rule: str, order: tuple[Tensor, int] | None = None) -> Tensor:
    """Per number, the mean of ``alpha(S)`` over the non-empty subsets weighted by ``rule``
    (:func:`size_weights`), exactly, for any n: with ``c_i = 1 - beta_i``,

    - ``subsets``: ``2**n / (2**n - 1) * (1 - prod_i (1 - beta_i / 2))``, since the sum over all
      subsets of ``prod_{i in S} c_i`` is ``prod_i (1 + c_i)``;
    - ``sizes``: ``mean_k (1 - e_k(c) / C(n, k))`` with ``e_k`` the elementary symmetric
      polynomials (:func:`size_mean_of_products`).

    ``order`` (:func:`~regprim.solvers.reach.reach_order` of the players whose beta may be
    non-zero at each number, its reach set; beta is 0 elsewhere) makes the ``sizes`` rule cost
    the square of the largest support instead of the square of n (n = 36: 81 ms -> a few ms a
    step).
    """
    n = beta.shape[0]
    if weight_rule(n, rule) == "subsets":
        return (1 - (1 - beta / 2).prod(dim=0)) * (2**n / (2**n - 1))
    return 1 - size_mean_of_products(1 - beta, order)


def size_mean_of_products(c: Tensor, order: tuple[Tensor, int] | None = None) -> Tensor:
    """``mean_{k=1..n} e_k(c) / C(n, k)`` per number, for ``c`` ``(n, *shape)`` that is 1 outside
    the support that ``order`` puts first (:func:`~regprim.solvers.reach.reach_order`; None:
    every player). Outside the support each factor of ``prod_i (1 + c_i x)`` is ``(1 + x)``, so with
    the ``M`` players of the largest support gathered first (support players, then any others),
    ``e_k = sum_j q_j C(n - M, k - j)`` where ``q`` are the coefficients of the product over those
    ``M`` players: an ``O(M^2)`` recursion per number and a fixed table of weights."""
    n = c.shape[0]
    flat = c.flatten(1)
    if order is None:
        order = torch.arange(n, device=c.device)[:, None].expand(n, flat.shape[1]), n
    first, m = order
    gathered = flat.gather(0, first)  # (m, D): each number's support players first
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
    obj: Objective, beta: Tensor, bits: Tensor, weights: Tensor, full: bool, exact: bool = True
) -> Tensor:
    """The reconstruction part of the OR objective on the subsets ``bits``: its exact share of
    the weighted mean when ``full`` (the rows are all the subsets), else the mean over a batch
    drawn from the weights (an unbiased estimate of the whole)."""
    n = obj.n
    alpha = alpha_of(beta, bits.to(beta.device), exact)
    u = torch.addcmul(obj.f0[None], alpha, obj.df[None]).contiguous(memory_format=obj.memory_format)
    masks, weight = obj.masks(to_bitmasks(bits))
    rec = weight * obj.errors(obj.render(u), masks)
    if not full:
        return rec.mean()
    sizes = bits.sum(1)
    counts = torch.tensor([math.comb(n, int(k)) for k in sizes], dtype=torch.float64)
    return (rec * (weights[sizes - 1] / counts).to(rec.dtype).to(rec.device)).sum()


def exclusivity(obj: Objective, beta: Tensor, players: Tensor, exact: bool = True) -> Tensor:
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
    share = (1 - beta[players]) * alpha_of(beta, others.to(beta.device), exact)
    v = torch.addcmul(obj.f0[None], share, obj.df[None]).contiguous(memory_format=obj.memory_format)
    masks, weight = obj.masks(1 << players.cpu())
    change = ((obj.render(v) - obj.baseline_image) ** 2 * masks).flatten(1).sum(1)
    base = obj.cell_base
    return obj.cfg.or_exclusive * (weight * change * base.mean() / base[players]).mean()


def singles_per_step(n: int, batch: int) -> int:
    """How many players' exclusivity one step scores: ``batch // 8`` (at least 1), at most n.
    A sample is an unbiased estimate of the term; 4 per step gave the same Fig. 6 and L1 as 8
    or all 9 at n = 9 in less time, and Fig. 6 <= 0.05 on the whole grid (docs/performance.md)."""
    return min(n, max(1, batch // 8))


def singles(n: int, batch: int, rng: torch.Generator) -> Tensor:
    """The players whose exclusivity one step scores (:func:`singles_per_step`): all of them,
    or that many drawn without replacement."""
    k = singles_per_step(n, batch)
    return torch.arange(n) if k == n else torch.randperm(n, generator=rng)[:k]


def sparsity(obj: Objective, beta: Tensor) -> Tensor:
    """The sparsity part of the OR objective, exact: the weighted mean of ``||u(S) - f0||_1``."""
    mean = mean_alpha(beta, obj.cfg.subset_weights, obj.reach_order)
    return (mean * obj.df.abs()).sum() * obj.l1_scale


def beta_residual(
    obj: Objective, beta: Tensor, weights: Tensor, chunk: int, exact: bool = True
) -> float:
    """KKT residual of ``beta`` on the whole objective: the norm of its projected gradient
    (zero where a bound holds a beta whose gradient pushes it against that bound, and outside
    the reach sets) over the norm of the sparsity term's gradient, the gradient the solve
    followed (``exact``, :func:`alpha_of`). Every subset when n <= 12, else 16 batches drawn
    from the weights; the exclusivity term on every player."""
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
        rec = reconstruction(obj, beta, bits, weights, full, exact)
        (g,) = torch.autograd.grad(rec, beta)
        grad += g if full else g / len(groups)
    if obj.cfg.or_exclusive:  # its mean over all players, in chunks
        for players in torch.arange(n).split(chunk):
            (g,) = torch.autograd.grad(exclusivity(obj, beta, players, exact), beta)
            grad += g * len(players) / n
    beta = beta.detach()
    held = ((beta <= 0) & (grad > 0)) | ((beta >= 1) & (grad < 0)) | ~obj.reach_sets
    return float(torch.where(held, 0.0, grad).norm() / l1.norm().clamp_min(1e-30))
