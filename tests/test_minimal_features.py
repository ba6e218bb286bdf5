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
    base = dict(model="planted", players=[7, 8, 13, 14], baseline_count=50)
    a = explain(ExplainConfig(**base, solver=SolverConfig(chunk=1)), progress=False)
    b = explain(ExplainConfig(**base, solver=SolverConfig(chunk=64)), progress=False)
    torch.testing.assert_close(a.minimal_features, b.minimal_features, atol=1e-5, rtol=0)


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
