"""The pipeline's stages, each on its own."""

import pytest
import torch

import regprim.solvers.problem.target as target_module
from regprim import ExplainConfig, explain, load_model
from regprim.pipeline.explain import interactions
from regprim.solvers import solve
from regprim.solvers.problem.target import build_target


def test_grid_and_players_are_checked_before_the_baseline(monkeypatch):
    def no_baseline(*args, **kwargs):
        raise AssertionError("the baseline was computed before the players were checked")

    monkeypatch.setattr(target_module, "baseline", no_baseline)
    gen = load_model("planted")
    with pytest.raises(ValueError, match=r"\[99\] out of range"):
        build_target(ExplainConfig(model="planted", players=[7, 99]), gen)
    with pytest.raises(ValueError, match="n=37 players do not fit a grid of 36 cells"):
        build_target(ExplainConfig(model="planted", n=37), gen)


def test_target_then_solve_then_interactions():
    cfg = ExplainConfig(model="planted", players=[7, 8, 14], baseline_count=50)
    target = build_target(cfg, load_model("planted"))
    assert target.n == 3 and target.player_masks.shape == (3, 48, 48)
    mf = solve(target, cfg.solver, progress=False)
    assert mf.u.shape == (8, 8, 4) and torch.equal(mf.u[0], target.f0)
    tensors = interactions(target, mf)
    assert tensors["universal_matching_residual"].max() < 1e-5
    assert torch.all(tensors["components"][0] == 0)


def test_the_checkpoint_key_follows_the_inputs_and_the_solve_settings_only():
    import dataclasses

    from regprim.pipeline.explain import checkpoint_key, resolved_config
    from regprim.solvers.problem.target import build_target

    cfg = ExplainConfig(model="planted", n=4, baseline_count=50)
    gen = load_model("planted")
    target = build_target(cfg, gen)
    resolved = resolved_config(cfg, target)
    key = checkpoint_key(resolved, target)
    assert checkpoint_key(resolved | {"salient_tau": 0.5}, target) == key  # after the solve
    assert checkpoint_key(resolved | {"seed": 9}, target) != key
    for name in ("f", "f0", "x"):  # same settings, another input (other weights, say)
        other = dataclasses.replace(target, **{name: getattr(target, name) + 1e-3})
        assert checkpoint_key(resolved, other) != key, name


def test_a_run_does_not_depend_on_what_ran_before_it_in_the_process():
    # a fresh generator: its first run once rendered x and f with the weights in one memory
    # format and solved in the other, so a second identical run differed from the first
    from regprim import SolverConfig

    gen = load_model("dcgan-faces")
    cfg = ExplainConfig(n=3, baseline_count=16, solver=SolverConfig(or_steps=15))
    first, second = (explain(cfg, generator=gen, progress=False, verify=False) for _ in range(2))
    assert torch.equal(first.image, second.image) and torch.equal(first.f, second.f)
    assert torch.equal(first.table.values, second.table.values)
