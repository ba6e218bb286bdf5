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
from regprim.solvers.problem.objective import Objective


class _Keep(torch.autograd.Function):
    """``prod_{i in S} (1 - beta_i)`` for every row of ``bits`` ``(..., B, n)`` and every
    number of ``flat`` ``(..., n, D)`` (leading dimensions batched), by two matrix products in
    log space (the logs of the non-zero factors, and how many factors are exactly 0). Its
    gradient at a factor of exactly 0 (``beta_i = 1``), which a log cannot give: with
    ``exact``, the product of the other factors (the true derivative); without, 0 (only the
    sparsity term then acts on that beta: it is pushed off its bound and pulled back; see
    :data:`regprim.solvers.or_structured.EXACT_BETA2` for when each is used)."""

    @staticmethod
    def forward(ctx, flat: Tensor, bits: Tensor, exact: bool) -> Tensor:
        zero = flat >= 1
        logs = torch.log(torch.where(zero, 1.0, 1 - flat))
        rows = bits.to(flat.dtype)
        others = torch.exp(rows @ logs)  # the product of the non-zero factors
        zeros = rows @ zero.to(flat.dtype)  # how many factors are 0
        ctx.save_for_backward(flat, zero, rows, others, zeros)
        ctx.exact = exact
        return torch.where(zeros > 0, 0.0, others)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        flat, zero, rows, others, zeros = ctx.saved_tensors
        # d keep / d beta_i = -(the product of the row's other factors)
        free = rows.mT @ (grad * others * (zeros == 0))  # rows without a zero: keep / (1 - b_i)
        d = free / torch.where(zero, 1.0, 1 - flat)
        if ctx.exact:  # rows whose one zero factor is beta_i's: the others' product
            lone = rows.mT @ (grad * others * (zeros == 1))
            d = torch.where(zero, lone, d)
        else:
            d = torch.where(zero, 0.0, d)
        return -d, None, None


def alpha_of(beta: Tensor, bits: Tensor, exact: bool = True) -> Tensor:
    """``alpha(S) = 1 - prod_{i in S} (1 - beta_i)`` for every row of ``bits`` ``(B, n)``
    (bool): ``(B, *shape)``, by :class:`_Keep` (``exact``: the true gradient also at
    ``beta_i = 1``). With ``beta`` ``(c, n, *shape)`` and ``bits`` ``(c, B, n)``, each of the
    ``c`` batches alone: ``(c, B, *shape)``."""
    after = bits.dim() - 1  # beta's dimensions from here on are the numbers' (after n)
    keep = _Keep.apply(beta.flatten(after), bits, exact)
    return (1 - keep).view(*bits.shape[:-1], *beta.shape[after:])


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

    ``order`` (:func:`~regprim.solvers.problem.reach.reach_order` of the players whose beta may be
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
    the support that ``order`` puts first (:func:`~regprim.solvers.problem.reach.reach_order`; None:
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
    return to_bits(torch.arange(1, 2**n), n)


def to_bits(masks: Tensor, n: int) -> Tensor:
    """Bitmasks ``(B,)`` as their players, bool ``(B, n)`` (:func:`to_bitmasks` undone)."""
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
    masks, weight = obj.masks(to_bitmasks(bits))
    rec = weight * obj.errors(obj.render(alpha), masks)
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
    masks, weight = obj.masks(1 << players.cpu())
    change = ((obj.render(share) - obj.baseline_image) ** 2 * masks).flatten(1).sum(1)
    return exclusive_term(obj, change, players, weight)


def exclusive_term(obj: Objective, change: Tensor, players: Tensor, weight: Tensor) -> Tensor:
    """The exclusivity term from each of ``players``' squared change of its cell against the
    baseline image and its reconstruction weight (:func:`exclusivity`)."""
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


class CellGame:
    """The reconstruction and exclusivity terms of the OR objective played per cell (the game
    per cell, :mod:`regprim.solvers.problem.cells`), for a game that has cells and n <= 12.

    The error of S on cell i depends on S only through ``T = S & neighbours[i]``, so the
    reconstruction term over every subset is ``sum_i sum_T W_i(T) err_i(T)``, ``W_i(T)`` the
    summed weights of the subsets S that hold i and meet i's neighbours in T (the rows of
    :attr:`items`). :meth:`exact` renders every row (304 cell renders on dcgan-faces block3
    n = 9, about a tenth of the pixels of the 511 subsets); :meth:`sampled` an unbiased
    estimate from ``k`` rows per cell drawn by their weight (:meth:`draw`), with the
    exclusivity of every player, for each step of the solve.
    """

    def __init__(self, obj: Objective, weights: Tensor) -> None:
        assert obj.cells is not None, "a game without cells is played on whole renders"
        self.obj, n, neighbours = obj, obj.n, obj.cells.neighbours
        bits = all_subsets(n)
        masks = to_bitmasks(bits)
        _, weight = obj.masks(masks)
        sizes = bits.sum(1)
        counts = torch.tensor([math.comb(n, int(k)) for k in sizes], dtype=torch.float64)
        share = weight.double().cpu() * weights[sizes - 1] / counts  # each subset's
        cells, keys, totals = [], [], []
        for i in range(n):
            inside = (masks >> i) & 1 == 1
            found, where = torch.unique(masks[inside] & neighbours[i], return_inverse=True)
            total = torch.zeros(len(found), dtype=torch.float64).index_add_(0, where, share[inside])
            cells.append(torch.full((len(found),), i))
            keys.append(found)
            totals.append(total)
        self.cells = torch.cat(cells)  # (K,): each row's cell
        self.rows = to_bits(torch.cat(keys), n)  # (K, n): T
        self.weight = torch.cat(totals).to(obj.x.dtype)  # (K,): W_i(T)
        self.groups = [torch.nonzero(self.cells == i).flatten() for i in range(n)]
        self.totals = torch.stack([self.weight[g].sum() for g in self.groups])
        self.others = ~torch.eye(n, dtype=torch.bool)  # N - {i}: exclusivity's rows
        _, self.single = obj.masks(1 << torch.arange(n))  # each single cell's weight

    @property
    def items(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per row: its cell ``(K,)``, T's players ``(K, n)`` and ``W_i(T)`` ``(K,)``."""
        return self.cells, self.rows, self.weight

    def crops(self, beta: Tensor) -> Tensor:
        """Every cell's crop of ``beta``: ``(n, n, C, h', w')`` (cell, player, ...)."""
        return self.obj.cells.stack(beta)

    def draw(self, k: int, rng: torch.Generator) -> Tensor:
        """``k`` rows per cell drawn by their weights (with replacement): ``(n, k)``."""
        return torch.stack(
            [g[torch.multinomial(self.weight[g], k, True, generator=rng)] for g in self.groups]
        )

    def _exclusivity(self, crops: Tensor, share_alpha: Tensor) -> Tensor:
        """The exclusivity term from ``alpha(N - {i})`` on each cell ``(n, C, h', w')``."""
        obj, players = self.obj, torch.arange(self.obj.n)
        share = (1 - crops[players, players]) * share_alpha
        change = obj.cell_errors(obj.render(share, players), players, baseline=True)
        return exclusive_term(obj, change, players, self.single)

    def sampled(self, beta: Tensor, picks: Tensor, exact: bool) -> Tensor:
        """An unbiased estimate of the reconstruction term from the rows ``picks`` ``(n, k)``
        (:meth:`draw`), plus the exclusivity of every player; one render of ``n * (k + 1)``
        cell crops (``exact``: as :func:`alpha_of`)."""
        obj, (n, k) = self.obj, picks.shape
        crops = self.crops(beta)
        bits = torch.cat([self.rows[picks], self.others[:, None]], 1).to(beta.device)
        alpha = alpha_of(crops, bits, exact)  # (n, k + 1, C, h', w')
        cells = torch.arange(n).repeat_interleave(k)
        err = obj.cell_errors(obj.render(alpha[:, :k].flatten(0, 1), cells), cells)
        rec = (self.totals[cells] / k * err).sum()
        if not obj.cfg.or_exclusive:
            return rec
        return rec + self._exclusivity(crops, alpha[:, k])

    def exact(self, beta: Tensor, exact: bool = True) -> Tensor:
        """The reconstruction term over every subset plus the exclusivity term over every
        player, exactly: what :func:`reconstruction` with every subset plus
        :func:`exclusivity` with every player give."""
        obj = self.obj
        crops = self.crops(beta)
        rows = [
            alpha_of(crops[i], self.rows[g].to(beta.device), exact)
            for i, g in enumerate(self.groups)
        ]
        err = obj.cell_errors(obj.render(torch.cat(rows), self.cells), self.cells)
        rec = (self.weight * err).sum()
        if not obj.cfg.or_exclusive:
            return rec
        share = alpha_of(crops, self.others[:, None].to(beta.device), exact)[:, 0]
        return rec + self._exclusivity(crops, share)


def beta_residual(
    obj: Objective,
    beta: Tensor,
    weights: Tensor,
    chunk: int,
    exact: bool = True,
    game: CellGame | None = None,
) -> float:
    """KKT residual of ``beta`` on the whole objective: the norm of its projected gradient
    (zero where a bound holds a beta whose gradient pushes it against that bound, and outside
    the reach sets) over the norm of the sparsity term's gradient, the gradient the solve
    followed (``exact``, :func:`alpha_of`). Every subset when n <= 12 (from cell renders where
    the game has cells and they render fewer positions, :meth:`CellGame.exact`), else 16
    batches drawn from the weights; the exclusivity term on every player."""
    n = obj.n
    full = n <= 12
    if game is None and full and obj.cells is not None:  # the solve's, else made here
        game = CellGame(obj, weights)
    if game is not None and len(game.cells) * obj.cells.share < 2**n - 1:  # fewer positions
        beta = beta.clone().requires_grad_(True)
        (l1,) = torch.autograd.grad(sparsity(obj, beta), beta)
        (grad,) = torch.autograd.grad(game.exact(beta, exact), beta)
        return projected_norm(obj, beta.detach(), grad + l1, l1)
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
    return projected_norm(obj, beta.detach(), grad, l1)


def projected_norm(obj: Objective, beta: Tensor, grad: Tensor, l1: Tensor) -> float:
    """The norm of the projected gradient ``grad`` over that of the sparsity term's ``l1``."""
    held = ((beta <= 0) & (grad > 0)) | ((beta >= 1) & (grad < 0)) | ~obj.reach_sets
    return float(torch.where(held, 0.0, grad).norm() / l1.norm().clamp_min(1e-30))
