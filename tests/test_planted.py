"""The method against ground truth: a generator with planted, known primitives."""

import torch

from regprim import ExplainConfig, SolverConfig, explain
from regprim.generators.planted import DEFAULT_PLAYERS, Planted


def test_salient_components_are_exactly_the_planted_sets(planted_run):
    run = planted_run
    truth = Planted().true_components(run.f, run.f0, run.players)
    assert len(truth) == 8
    assert sorted(run.salient) == sorted(truth)
    smallest = min(float(t.norm()) for t in truth.values())
    comps = run.components
    for mask, true in truth.items():
        cos = torch.nn.functional.cosine_similarity(comps[mask].flatten(), true.flatten(), dim=0)
        assert cos >= 0.99, (mask, float(cos))
    others = [k for k in range(1, 2**run.n) if k not in truth]
    worst = max(float(comps[k].norm()) for k in others)
    assert worst < 0.01 * smallest, worst / smallest


def test_planted_run_meets_constraint_and_matches(planted_run):
    s = planted_run.summary
    assert s["subsets_meeting_constraint"] == 1.0
    assert s["universal_matching_max_rel_residual"] < 1e-5


def test_planted_minimal_features_equal_truth(planted_run):
    run = planted_run
    truth = Planted().true_components(run.f, run.f0, run.players)
    for s in [1, 7, 2**run.n - 1]:
        expected = run.f0 + sum(v for k, v in truth.items() if k & s)
        err = (run.minimal_features[s] - expected).norm() / (run.f - run.f0).norm()
        assert err < 1e-3


def test_wrong_solver_is_caught_by_the_planted_check():
    """A solver stopped far too early does not pass the recovery criterion (the test can fail)."""
    cfg = ExplainConfig(
        model="planted",
        players=list(DEFAULT_PLAYERS),
        baseline_count=200,
        solver=SolverConfig(method="paper", optimizer="adam", steps=3),
    )
    run = explain(cfg, progress=False, verify=False)
    truth = Planted().true_components(run.f, run.f0, run.players)
    others = [k for k in range(1, 2**run.n) if k not in truth]
    smallest = min(float(t.norm()) for t in truth.values())
    worst = max(float(run.components[k].norm()) for k in others)
    assert worst > 0.01 * smallest
