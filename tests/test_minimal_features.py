"""The minimal-feature solver on the planted generator, whose exact answers are known."""

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain, load_model
from regprim.minimal_features import Problem, lowest_missing_bit, subsets_of_size
from regprim.models.planted import DEFAULT_PLAYERS, Planted
from regprim.regions import Grid


def planted_problem(cfg: SolverConfig):
    gen = load_model("planted")
    code = gen.sample_codes(1, 0)
    f0 = torch.full(gen.shapes()[0], 0.4)
    with torch.no_grad():
        f = gen.d(code)[0]
        x = gen.g(f[None], code)[0]
    masks = Grid(6, 6, 48, 48).cell_masks()[list(DEFAULT_PLAYERS)]
    return Problem(gen, code, f, f0, x, masks, cfg), f, f0


@pytest.mark.parametrize("sparsity", ["l1-delta", "l1"])
def test_numbers_without_a_path_to_the_cells_go_to_the_sparsity_minimiser(sparsity):
    problem, f, f0 = planted_problem(SolverConfig(sparsity=sparsity))
    alpha, _ = problem.solve(torch.tensor([0b1]), torch.ones(1, *f.shape), steps=1)
    # player 0 is cell 7: only primitives (7,) and (7, 21) -- groups 0 and 6 -- reach it
    dead = [k for k in range(8) if k not in (0, 6)]
    expected = problem.sparsity_minimiser()[dead]
    assert torch.equal(alpha[0, dead], expected)
    if sparsity == "l1-delta":
        assert torch.all(expected == 0)
    assert torch.all(alpha[0, [0, 6]] > 0.9)


@pytest.mark.parametrize("warm_start", ["parent", "full"])
def test_both_warm_starts_reach_the_planted_minimal_features(warm_start):
    cfg = ExplainConfig(
        model="planted",
        players=list(DEFAULT_PLAYERS),
        baseline_count=100,
        solver=SolverConfig(warm_start=warm_start, steps=60),
    )
    run = explain(cfg, progress=False)
    truth = Planted().true_components(run.tensors["f"], run.f0, run.players)
    scale = (run.tensors["f"] - run.f0).norm()
    for s in range(1, 2**run.n):
        expected = run.f0 + sum(v for k, v in truth.items() if k & s)
        assert (run.minimal_features[s] - expected).norm() / scale < 2e-3, s


def test_chunk_size_does_not_change_the_result():
    """Chunks of 1 and 64 subsets solve the same problems. Batched convolutions and matrix
    products sum in another order for another batch size, CPU or thread count, so the results
    agree to ~1e-4 (4.1e-4 seen on an Intel Xeon, 2e-6 on an AMD EPYC), not bit for bit; a
    chunking bug (subsets mixed up) would differ by O(1)."""
    base = dict(model="planted", players=[7, 8, 13, 14], baseline_count=50)
    a = explain(ExplainConfig(**base, solver=SolverConfig(chunk=1)), progress=False)
    b = explain(ExplainConfig(**base, solver=SolverConfig(chunk=64)), progress=False)
    torch.testing.assert_close(a.minimal_features, b.minimal_features, atol=2e-3, rtol=0)


def test_subsets_missing_the_constraint_are_flagged():
    cfg = ExplainConfig(
        model="planted",
        players=[7, 8, 13],
        baseline_count=50,
        solver=SolverConfig(steps=2, full_steps=2, constraint=1e-9),
    )
    run = explain(cfg, progress=False)
    s = run.summary
    assert s["subsets_meeting_constraint"] == 1 / 8  # only the empty set
    assert s["subsets_failing_constraint"] == list(range(1, 8))
    assert not run.tensors["meets_constraint"][1:].any()


def test_level_order_helpers():
    assert subsets_of_size(4, 3) == [7, 11, 13, 14]
    parents = torch.tensor([0b0101, 0b0110, 0b0000]) | lowest_missing_bit(
        torch.tensor([0b0101, 0b0110, 0b0000]), 4
    )
    assert parents.tolist() == [0b0111, 0b0111, 0b0001]


def test_bfloat16_passes_still_meet_the_constraint():
    cfg = ExplainConfig(
        model="planted",
        players=[7, 8, 13, 14],
        baseline_count=50,
        solver=SolverConfig(precision="bfloat16"),
    )
    run = explain(cfg, progress=False)
    assert run.summary["subsets_meeting_constraint"] == 1.0


def _faces_problem(n: int, gen=None):
    from regprim.baseline import baseline
    from regprim.regions import center_players

    gen = gen or load_model("dcgan-faces")
    f0 = baseline(gen, 32, 0)
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        f = gen.d(code)[0]
        x = gen.g(f[None], code)[0]
    grid = Grid(6, 6, *x.shape[1:])
    return gen, code, f, f0, x, grid.cell_masks()[center_players(grid, n)]


def test_window_renders_the_players_exactly_and_solves_the_same_problem():
    gen, code, f, f0, x, masks = _faces_problem(3)
    problem = Problem(gen, code, f, f0, x, masks, SolverConfig())
    assert (
        problem.window is not None
        and Problem(gen, code, f, f0, x, masks, SolverConfig(crop=False)).window is None
    )
    fy, fx, py, px = problem.window
    u = f0 + torch.rand(3, *f.shape) * (f - f0)
    with torch.no_grad():
        full = gen.g(u, code)[..., py, px]
        cropped = gen.g(u[..., fy, fx].contiguous(), code)
    on_players = masks.any(0)[py, px]
    assert ((full - cropped).abs() * on_players).max() < 1e-5
    # outside the window alpha sits at the sparsity minimiser; the solution is as good
    runs = [
        explain(
            ExplainConfig(n=3, baseline_count=32, solver=SolverConfig(crop=c)),
            progress=False,
            verify=False,
        )
        for c in (True, False)
    ]
    delta = runs[0].minimal_features - runs[0].f0
    outside = torch.ones(f.shape, dtype=torch.bool)
    outside[:, fy, fx] = False
    assert torch.all(delta[:, outside] == 0)
    l1 = [float((r.minimal_features - r.f0).abs().sum()) for r in runs]
    assert abs(l1[0] - l1[1]) < 0.02 * l1[1]
    assert all(r.summary["subsets_meeting_constraint"] == 1.0 for r in runs)


def test_no_window_for_a_generator_that_is_not_translation_equivariant():
    from torch import nn

    from regprim import split_sequential

    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 4, 1, 0),
        nn.ReLU(),  # 16x4x4 feature
        nn.ConvTranspose2d(16, 4, 4, 2, 1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3 * 8 * 8),
        nn.Unflatten(1, (3, 8, 8)),
        nn.Tanh(),
    )
    gen = split_sequential(seq, "1", code_dim=8).freeze()
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        f = gen.d(code)[0]
        x = gen.g(f[None], code)[0]
    masks = Grid(4, 4, 8, 8).cell_masks()[[0]]
    assert Problem(gen, code, f, torch.zeros_like(f), x, masks, SolverConfig()).window is None
