"""Memory, measured (solvers/problem/memory.py), passes in micro-batches that fit (Objective.fit and
render), and the dry run's predictions (pipeline/plan.py)."""

from __future__ import annotations

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain
from regprim.generators.planted_family import planted_family
from regprim.pipeline.plan import plan
from regprim.solvers.or_objective import all_subsets, exclusivity, reconstruction, size_weights
from regprim.solvers.problem.memory import Peak, batch_that_fits, peak
from regprim.solvers.problem.objective import Objective
from regprim.solvers.problem.target import build_target

MiB = 2**20


def member_target(seed: int = 1003):
    member = planted_family(seed)
    cfg = ExplainConfig(model="planted", players=member.players, grid=member.grid)
    return member, cfg, build_target(cfg, member.generator.freeze())


def test_peak_sees_an_allocation_inside_the_block():
    with peak(torch.device("cpu")) as found:
        block = torch.ones(64 * MiB // 4)  # 64 MiB
        del block
    if not found.exact:
        pytest.skip("this system cannot reset its resident high-water mark")
    assert 48 * MiB <= found.bytes <= 256 * MiB


def test_micro_batches_give_the_whole_batch_value_and_gradient():
    _, cfg, target = member_target()
    obj = Objective(target, cfg.solver)
    n = obj.n
    bits, weights = all_subsets(n), size_weights(n, "subsets")
    beta = (0.7 * obj.reach_sets.float()).requires_grad_(True)

    def loss_and_grad():
        loss = reconstruction(obj, beta, bits, weights, True)
        loss = loss + exclusivity(obj, beta, torch.arange(n))
        return loss, torch.autograd.grad(loss, beta)[0]

    obj.micro = None
    whole, grad = loss_and_grad()
    obj.micro = 3  # each micro-batch recomputed in the backward pass
    split, grad_split = loss_and_grad()
    assert torch.allclose(whole, split, rtol=1e-5)
    assert torch.allclose(grad, grad_split, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))


def test_a_budget_that_one_feature_does_not_fit_is_refused_with_the_fixes():
    _, cfg, target = member_target()
    with pytest.raises(MemoryError, match=r"one pass of one feature needs.*memory-budget-gb"):
        Objective(target, cfg.solver, memory_budget=1)


def test_a_budget_splits_the_passes_and_the_run_is_the_same(monkeypatch):
    """With a budget that fits three features per pass, the solve runs micro-batches of three
    (recorded), renders in batches no larger, and finds the same minimal features."""
    member, cfg, _ = member_target()
    cfg = ExplainConfig(
        model="planted",
        players=member.players,
        grid=member.grid,
        solver=SolverConfig(or_steps=60),
        baseline_count=50,
    )
    free = explain(cfg, generator=member.generator, progress=False, verify=False)
    assert free.summary["micro_batch"] is None

    def measured(self, batch):  # 100 MiB per feature, 10 MiB fixed: a pass of 3 fits
        return 0.001 * batch, Peak(0, (10 + 100 * batch) * MiB, True)

    monkeypatch.setattr(Objective, "measure", measured)
    from regprim.solvers.problem import memory

    held = memory.resident_bytes(torch.device("cpu"))
    monkeypatch.setattr(memory, "resident_bytes", lambda device: held)
    monkeypatch.setattr("regprim.solvers.problem.objective.resident_bytes", lambda device: held)
    budget = (held + 350 * MiB) / 2**30
    split = explain(
        ExplainConfig(**{**cfg.to_dict(), "memory_budget_gb": budget}),
        generator=member.generator,
        progress=False,
        verify=False,
    )
    assert split.summary["micro_batch"] == 3
    assert split.summary["pass_memory"]["bytes_per_feature"] == 100 * MiB
    assert member.generator.max_batch == 3
    a, b = free.tensors["minimal_features"], split.tensors["minimal_features"]
    assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))


def test_baseline_batches_fit_in_half_the_free_memory_and_two_gib():
    cpu = torch.device("cpu")
    assert batch_that_fits(1, cpu, 250) == 250
    assert batch_that_fits(2**30, cpu, 250) <= 2
    assert batch_that_fits(2**40, cpu, 250) == 1


def test_the_dry_run_measures_passes_instead_of_computing_the_baseline(monkeypatch, tmp_path):
    """It never computes the 1000-code baseline (a stand-in of two codes, whose time it
    extrapolates), and predicts the peak from measured passes."""
    import regprim.solvers.problem.target as target_module

    monkeypatch.setenv("REGPRIM_CACHE", str(tmp_path))  # no baseline cached yet
    member = planted_family(1003)
    cfg = ExplainConfig(
        model="planted", players=member.players, grid=member.grid, baseline_count=1000
    )
    monkeypatch.setattr(
        target_module, "baseline", lambda *a, **k: pytest.fail("computed the baseline")
    )
    p = plan(cfg, generator=member.generator)
    assert p["baseline_seconds"] > 0
    assert p["memory_bytes"] >= p["held_bytes"] + p["solver_memory_bytes"]
    assert p["estimated_solve_seconds"] > 0 and p["expected_passes"] > cfg.solver.or_steps
    assert p["timed"].startswith("timed at the solve's batch")
