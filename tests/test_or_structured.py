"""The OR-structured objective's closed forms and terms against brute force on small n."""

import itertools
import math

import pytest
import torch

from regprim.core.interactions import or_interactions, or_interactions_reference
from regprim.solvers.components import components_of
from regprim.solvers.or_objective import (
    all_subsets,
    alpha_of,
    exclusivity,
    mean_alpha,
    sample_subsets,
    singles,
    size_weights,
    to_bitmasks,
)
from regprim.solvers.or_structured import snap
from regprim.solvers.problem.reach import reach_order
from regprim.solvers.whole_grid import heldout_subsets, settle


def random_beta(n=4, shape=(3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    beta = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    beta[0, 0, 0] = 0.0  # exact bounds, as the projection leaves them
    beta[1, 0, 1] = 1.0
    return beta


def brute_alpha(beta, subset):
    keep = torch.ones_like(beta[0])
    for i in subset:
        keep = keep * (1 - beta[i])
    return 1 - keep


def test_alpha_is_one_minus_the_product_over_the_subset():
    beta = random_beta()
    n = beta.shape[0]
    bits = torch.cat([torch.zeros(1, n, dtype=torch.bool), all_subsets(n)])
    alpha = alpha_of(beta, bits)
    for mask in range(2**n):
        subset = [i for i in range(n) if mask >> i & 1]
        torch.testing.assert_close(alpha[mask], brute_alpha(beta, subset))
    assert not alpha[0].any()  # u(empty) = f0
    # OR, not max: two players of 0.5 give 0.75
    half = torch.full((2, 1), 0.5, dtype=torch.float64)
    assert float(alpha_of(half, torch.tensor([[True, True]]))[0, 0]) == pytest.approx(0.75)


def test_the_product_over_players_has_its_exact_gradient_at_one():
    """alpha's gradient equals the direct product's, also where a beta is exactly 1 (the
    product of the other factors); without ``exact``, 0 there and the same elsewhere."""
    beta = random_beta(n=5, seed=3)
    beta[1, 0] = 1.0  # one factor 0
    beta[2, 1] = beta[3, 1] = 1.0  # two factors 0 in some rows
    n = beta.shape[0]
    bits = all_subsets(n)
    weights = torch.randn(len(bits), *beta.shape[1:], dtype=beta.dtype)

    def direct(b, bits):
        keep = torch.where(bits.view(*bits.shape, *[1] * (b.dim() - 1)), 1 - b[None], 1.0)
        return 1 - keep.prod(1)

    grads = {}
    for name, fn in (("exact", alpha_of), ("direct", direct)):
        b = beta.clone().requires_grad_(True)
        (grads[name],) = torch.autograd.grad((fn(b, bits) * weights).sum(), b)
    torch.testing.assert_close(grads["exact"], grads["direct"])
    assert (grads["exact"][1, 0] != 0).all()  # the reconstruction still pulls a number at 1
    b = beta.clone().requires_grad_(True)
    (pushed,) = torch.autograd.grad((alpha_of(b, bits, exact=False) * weights).sum(), b)
    at_one = beta >= 1
    assert not pushed[at_one].any()
    torch.testing.assert_close(pushed[~at_one], grads["direct"][~at_one])


@pytest.mark.parametrize("rule", ["subsets", "sizes"])
def test_mean_alpha_equals_the_weighted_mean_over_enumerated_subsets(rule):
    beta = random_beta(n=5, seed=1)
    n = beta.shape[0]
    weights = size_weights(n, rule)
    want = torch.zeros_like(beta[0])
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        for subset in subsets:
            want += weights[k - 1] / len(subsets) * brute_alpha(beta, subset)
    torch.testing.assert_close(mean_alpha(beta, rule), want)
    if rule == "subsets":  # every subset alike: the plain mean over the 2**n - 1 of them
        counts = torch.tensor([math.comb(n, k) for k in range(1, n + 1)], dtype=torch.float64)
        torch.testing.assert_close(weights, counts / counts.sum())


def test_components_are_the_moebius_transform_of_the_minimal_features():
    beta = random_beta(n=4, seed=2)
    n = beta.shape[0]
    df = torch.randn(
        *beta.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    f0 = torch.zeros_like(df)
    bits = torch.cat([torch.zeros(1, n, dtype=torch.bool), all_subsets(n)])
    u = f0 + alpha_of(beta, bits) * df
    dense = or_interactions(u.clone())
    torch.testing.assert_close(dense, or_interactions_reference(u))
    found = components_of(beta, df)
    for mask in range(1, 2**n):
        closed = df.clone()
        for i in range(n):
            closed = closed * (beta[i] if mask >> i & 1 else 1 - beta[i])
        torch.testing.assert_close(dense[mask], closed)  # the closed form of the module docstring
        torch.testing.assert_close(found.get(mask, torch.zeros_like(df)), closed)


def test_binary_beta_gives_each_number_to_exactly_one_component():
    beta = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    df = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    found = components_of(beta, df)
    assert sorted(found) == [0b01, 0b10, 0b11]
    torch.testing.assert_close(found[0b11], torch.tensor([2.0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(found[0b10], torch.tensor([0, 3.0, 0], dtype=torch.float64))
    torch.testing.assert_close(found[0b01], torch.tensor([0, 0, 5.0], dtype=torch.float64))


def test_snap_sets_values_near_a_bound_to_it():
    beta = torch.tensor([0.0, 0.01, 0.03, 0.5, 0.97, 0.99, 1.0])
    assert snap(beta, 0.02).tolist() == pytest.approx([0, 0, 0.03, 0.5, 0.97, 1, 1])


def test_settle_rounds_only_numbers_spread_over_too_many_players():
    n = 14
    beta = torch.zeros(n, 2)
    beta[:, 0] = 0.6  # fractional over 14 players: rounded at 0.5
    beta[:3, 1] = torch.tensor([0.2, 0.7, 1.0])  # fractional over 3: kept
    rounded, count = settle(beta)
    assert count == 1
    assert rounded[:, 0].tolist() == [1.0] * n
    assert rounded[:3, 1].tolist() == pytest.approx([0.2, 0.7, 1.0])


def test_sampled_subsets_follow_the_size_weights():
    n, rng = 6, torch.Generator().manual_seed(0)
    weights = torch.zeros(n, dtype=torch.float64)
    weights[1] = 1.0  # only pairs
    bits = sample_subsets(n, 200, weights, rng)
    assert (bits.sum(1) == 2).all()
    masks = to_bitmasks(bits)
    assert all(int(m).bit_count() == 2 for m in masks)
    assert to_bitmasks(all_subsets(3)).tolist() == list(range(1, 8))


def test_held_out_subsets_are_never_ones_the_solver_sampled():
    n = 8
    seen = set(range(1, 2**n, 2))  # every odd bitmask was "trained on"
    held = to_bitmasks(heldout_subsets(n, 50, seen)).tolist()
    assert len(held) == len(set(held)) == 50
    assert not set(held) & seen


def test_the_sizes_mean_over_a_small_support_equals_enumeration():
    """With beta zero outside each number's support (its reach set), the O(M^2) recursion over
    the M players of the largest support gives the enumerated mean over all 2**n - 1 subsets."""
    n = 9
    g = torch.Generator().manual_seed(4)
    beta = torch.rand(n, 5, generator=g, dtype=torch.float64)
    support = torch.zeros(n, 5, dtype=torch.bool)
    support[:3, 0] = True  # numbers reaching 3, 1, 0, 2 and 4 players
    support[4, 1] = True
    support[[2, 7], 3] = True
    support[[0, 5, 6, 8], 4] = True
    beta = beta * support
    weights = size_weights(n, "sizes")
    want = torch.zeros(5, dtype=torch.float64)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        for subset in subsets:
            want += weights[k - 1] / len(subsets) * brute_alpha(beta, subset)
    torch.testing.assert_close(mean_alpha(beta, "sizes", reach_order(support)), want)
    torch.testing.assert_close(mean_alpha(beta, "sizes"), want)  # all players: the same


def _exclusivity_problem(players=(7, 9, 14, 21), weight=0.5):
    """The planted generator with four players; its group (7, 21) reaches two of them."""
    from regprim import ExplainConfig, SolverConfig, load_model
    from regprim.solvers import Objective
    from regprim.solvers.problem.target import build_target

    cfg = ExplainConfig(model="planted", players=list(players), baseline_count=50)
    solver = SolverConfig(or_exclusive=weight, crop=False)
    return Objective(build_target(cfg, load_model("planted")), solver)


def test_exclusivity_equals_brute_force_over_the_components_that_do_not_cover_each_cell():
    obj = _exclusivity_problem()
    n = obj.n
    g = torch.Generator().manual_seed(5)
    beta = torch.rand(n, *obj.df.shape, generator=g) * obj.reach_sets
    # brute force: every u(S), Eq. 10 by the slow reference, the components without player i
    u = torch.stack(
        [
            obj.f0 + brute_alpha(beta, [i for i in range(n) if mask >> i & 1]) * obj.df
            for mask in range(2**n)
        ]
    )
    comps = or_interactions_reference(u.double()).float()
    masks = obj.player_masks.float()
    per_pixel = ((obj.baseline_image - obj.x) ** 2).sum(0)
    base = (masks * per_pixel).flatten(1).sum(1) / masks.flatten(1).sum(1)
    want = []
    for i in range(n):
        v = obj.f0 + sum(comps[t] for t in range(1, 2**n) if not t >> i & 1)
        with torch.no_grad():
            image = obj.gen.g(v[None], obj.code)[0]
        change = (((image - obj.baseline_image) ** 2).sum(0) * masks[i]).sum()
        want.append(obj.cfg.lam * change * base.mean() / base[i])  # reduction "sum": lam / |S|
    expected = obj.cfg.or_exclusive * torch.stack(want).mean()
    with torch.no_grad():
        got = exclusivity(obj, beta, torch.arange(n))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # a sample of the players is the mean over those players
    with torch.no_grad():
        two = exclusivity(obj, beta, torch.tensor([3, 1]))
    torch.testing.assert_close(
        two, obj.cfg.or_exclusive * (want[3] + want[1]) / 2, rtol=1e-4, atol=1e-6
    )


def test_the_reach_reference_is_exclusive_and_a_shared_number_left_out_is_not():
    obj = _exclusivity_problem()
    reach = obj.reach_sets.float()
    with torch.no_grad():
        assert float(exclusivity(obj, reach, torch.arange(obj.n))) < 1e-7  # float rounding
        # a number that reaches cell i taken from u({i}) but left to the others: the components
        # that do not cover i now rebuild part of it
        shared = obj.reach_sets[0] & obj.reach_sets.sum(0).gt(1)
        assert shared.any()
        beta = reach.clone()
        beta[0][shared] = 0.0
        assert float(exclusivity(obj, beta, torch.tensor([0]))) > 1e-3


def test_singles_are_every_player_or_a_sample_without_repeats():
    rng = torch.Generator().manual_seed(0)
    assert singles(4, 32, rng).tolist() == list(range(4))
    seen = set()
    for n in (9, 36, 36):
        drawn = singles(n, 32, rng)
        assert len(drawn) == 4 and len(set(drawn.tolist())) == 4 and int(drawn.max()) < n
        seen |= set(drawn.tolist())
    assert len(seen) > 4  # drawn anew each call
    assert len(singles(5, 2, rng)) == 1  # a batch under 8 still scores one player


def test_an_interrupted_solve_resumes_to_the_uninterrupted_result():
    # the subsets and the exclusivity players are both sampled (n = 9 > 4 scored a step), so
    # a resume must replay both samplers to where the interrupted solve stopped
    from regprim import ExplainConfig, SolverConfig, load_model
    from regprim.generators.planted import DEFAULT_PLAYERS
    from regprim.solvers import Objective
    from regprim.solvers.or_structured import ORSolver
    from regprim.solvers.problem.target import build_target

    cfg = ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=50)
    solver = SolverConfig(or_steps=8)
    obj = Objective(build_target(cfg, load_model("planted")), solver)
    states = {}

    def keep(state):
        states[int(state["step"])] = {k: v.clone() for k, v in state.items()}

    whole = ORSolver.solve(obj, on_chunk=keep, progress=False)
    resumed = ORSolver.solve(obj, resume=states[3], progress=False)
    assert torch.equal(whole.beta, resumed.beta)
    # the game per cell draws its rows from the same seeded sampler: replayed as well
    faces = _faces_problem(or_steps=6)
    assert faces.cells is not None
    states.clear()
    whole = ORSolver.solve(faces, on_chunk=keep, progress=False)
    resumed = ORSolver.solve(faces, resume=states[2], progress=False)
    assert torch.equal(whole.beta, resumed.beta)
    other = ORSolver.solve(_faces_problem(or_steps=6, perturb_seed=1), progress=False)
    assert not torch.equal(whole.beta, other.beta)  # ... which the seed sets


def test_the_solve_lowers_what_the_exclusivity_term_measures():
    # on a real generator Eq. 8 alone leaves numbers that change a cell to a neighbour; the
    # default objective, with the term, ends with less of it (a sign flipped in the loss, or
    # the term left out of it, would not)
    import dataclasses

    from regprim import ExplainConfig, SolverConfig, load_model
    from regprim.solvers import Objective
    from regprim.solvers.or_structured import ORSolver
    from regprim.solvers.problem.target import build_target

    cfg = ExplainConfig(n=4, seed=1, baseline_count=16, solver=SolverConfig(or_steps=60))
    target = build_target(cfg, load_model("dcgan-faces"))
    scored = {}
    for weight in (0.0, cfg.solver.or_exclusive):
        solver = dataclasses.replace(cfg.solver, or_exclusive=weight)
        beta = ORSolver.solve(Objective(target, solver), progress=False).beta
        judge = Objective(target, dataclasses.replace(cfg.solver, or_exclusive=1.0, crop=False))
        with torch.no_grad():
            scored[weight] = float(exclusivity(judge, beta, torch.arange(4)))
    assert scored[cfg.solver.or_exclusive] < 0.5 * scored[0.0]  # 7.7 against 36 here


def _faces_problem(n=9, **solver):
    from regprim import ExplainConfig, SolverConfig, load_model
    from regprim.solvers import Objective
    from regprim.solvers.problem.target import build_target

    cfg = ExplainConfig(model="dcgan-faces", n=n, seed=1, baseline_count=16)
    return Objective(build_target(cfg, load_model("dcgan-faces")), SolverConfig(**solver))


def test_the_game_per_cell_is_the_whole_objective_over_every_subset_and_player():
    from regprim.solvers.or_objective import CellGame, reconstruction, sparsity

    obj = _faces_problem()
    assert obj.cells is not None and obj.cells.size == (5, 5)  # of the 12x14 window
    assert _faces_problem(or_cell_rows=0).cells is None  # whole renders, as regprim 0.3
    weights = size_weights(obj.n, "auto")
    game = CellGame(obj, weights)
    cells, rows, weight = game.items
    assert len(cells) == 304  # renders of cells, against 511 subsets of the whole window
    # each cell's rows are the distinct subsets of its neighbours that hold it
    for i in range(obj.n):
        keys = to_bitmasks(rows[cells == i])
        assert (keys & ~obj.cells.neighbours[i]).eq(0).all() and (keys >> i & 1).all()
        assert len(keys.unique()) == len(keys) == 2 ** (obj.cells.neighbours[i].bit_count() - 1)
    torch.testing.assert_close(weight.sum(), reconstruction_weight(obj, weights), rtol=1e-5, atol=0)
    g = torch.Generator().manual_seed(3)
    beta = (torch.rand(obj.n, *obj.df.shape, generator=g) * obj.reach_sets).requires_grad_(True)
    brute = reconstruction(obj, beta, all_subsets(obj.n), weights, True)
    brute = brute + exclusivity(obj, beta, torch.arange(obj.n))
    (want,) = torch.autograd.grad(brute + sparsity(obj, beta), beta)
    got_value = game.exact(beta)
    (got,) = torch.autograd.grad(got_value + sparsity(obj, beta), beta)
    torch.testing.assert_close(got_value, brute, rtol=1e-5, atol=0)
    on = obj.reach_sets  # off the reach sets beta is held at 0; there the cells see no player
    torch.testing.assert_close(got[on], want[on], rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # a step's estimate: k rows per cell by their weight, unbiased (the mean of many draws)
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = [float(game.sampled(beta, game.draw(4, rng), False)) for _ in range(200)]
    assert sum(draws) / len(draws) == pytest.approx(float(brute.detach()), rel=0.03)


def reconstruction_weight(obj, weights):
    """The summed weight of every (subset, cell of it) pair of the reconstruction term."""
    bits = all_subsets(obj.n)
    _, weight = obj.masks(to_bitmasks(bits))
    sizes = bits.sum(1)
    counts = torch.tensor([math.comb(obj.n, int(k)) for k in sizes], dtype=torch.float64)
    return (weight.double() * weights[sizes - 1] / counts * sizes).sum().float()


def test_a_generator_that_mixes_the_whole_feature_has_no_cells():
    from torch import nn

    from regprim import ExplainConfig, SolverConfig, split_sequential
    from regprim.solvers import Objective
    from regprim.solvers.problem.target import build_target

    class Mix(nn.Module):  # every pixel also sees the feature's mean, with no gradient: the
        # reach sets stay local, and only the check of each crop's pixels can refuse the cells
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 3, 4, 2, 1)

        def forward(self, f):
            return self.up(f) + f.mean((1, 2, 3)).detach().view(-1, 1, 1, 1)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (4, 16, 16)), Mix())
    gen = split_sequential(net, "0", code_dim=4 * 16 * 16, code_to_input=lambda z: z).freeze()
    cfg = ExplainConfig(model="mix", n=4, grid=(4, 4), baseline_count=8)
    obj = Objective(build_target(cfg, gen), SolverConfig())
    assert obj.reach_sets.flatten(1).sum(1).max() < 0.25 * obj.reach_sets[0].numel()  # local
    assert obj.cells is None and obj.window is None
    local = nn.Sequential(nn.Unflatten(1, (4, 16, 16)), nn.ConvTranspose2d(4, 3, 4, 2, 1))
    gen = split_sequential(local, "0", code_dim=4 * 16 * 16, code_to_input=lambda z: z).freeze()
    obj = Objective(
        build_target(ExplainConfig(model="local", players=[0, 15], grid=(4, 4)), gen),
        SolverConfig(),
    )
    assert obj.cells is not None  # the same cut without the mean: each cell from its crop
    assert obj.cells.neighbours == (0b01, 0b10)  # two far corners: no number reaches both
