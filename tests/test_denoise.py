"""Noise removal (Appendix G): noise added to a planted decomposition is removed."""

import pytest
import torch

from regprim import ExplainConfig, explain
from regprim.core.interactions import matched_features, or_interactions
from regprim.solvers.denoise import remove_noise

PLANTED = [1, 2, 6, 9, 48, 33]


def planted_decomposition(n=6, d=200, noise=0.02, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f0 = torch.zeros(d, dtype=torch.float64)
    comps = torch.zeros(2**n, d, dtype=torch.float64)
    for mask in PLANTED:
        comps[mask] = torch.randn(d, generator=gen, dtype=torch.float64)
    u = matched_features(comps, f0)
    eps = noise * (u[-1] - f0).abs() * (2 * torch.rand(u.shape, generator=gen) - 1)
    eps[0] = 0
    return u, u + eps, comps, f0


def test_noise_added_to_a_planted_decomposition_is_removed():
    u_true, u_noisy, comps, f0 = planted_decomposition()
    tau = 0.04 * (u_noisy[-1] - f0).abs()
    before = or_interactions(u_noisy)
    d = remove_noise(u_noisy, f0, tau_rel=0.04, steps=150)
    spurious = [k for k in range(1, 64) if k not in PLANTED]
    assert d.components[spurious].abs().sum() < 0.05 * before[spurious].abs().sum()
    rel = (d.components - comps).abs().sum() / comps.abs().sum()
    assert rel < 0.06
    assert torch.all((d.u - u_noisy).abs() <= tau + 1e-12)  # within the bound
    assert torch.equal(d.u[0], u_noisy[0])  # q of the empty set is 0
    assert d.l1_after < d.l1_before


def test_denoise_validates_its_bound():
    u = torch.randn(8, 3)
    with pytest.raises(ValueError, match="tau_rel=1.5 must be in"):
        remove_noise(u, u[0], tau_rel=1.5)


def test_explain_denoise_saves_both_and_checks_constraint():
    cfg = ExplainConfig(
        model="planted", players=[7, 8, 9, 14], baseline_count=50, denoise=True, denoise_steps=50
    )
    run = explain(cfg, verify=False, progress=False)
    t = run.tensors
    assert {"components", "components_denoised", "minimal_features_denoised"} <= set(t)
    assert run.summary["components_used"] == "denoised"
    assert run.components is t["components_denoised"]
    d = run.summary["denoise"]
    assert d["subsets_meeting_constraint"] == 1.0
    assert d["universal_matching_max_rel_residual"] < 1e-5
    assert d["l1_after"] <= d["l1_before"]
