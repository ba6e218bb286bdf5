"""Noise removal (Appendix G), salient rules (Appendix H) and the stability measurement."""

import pytest
import torch

from regprim import ExplainConfig, explain, load_model
from regprim.denoise import remove_noise
from regprim.interactions import (
    matched_features,
    moebius_,
    moebius_superset_,
    or_interactions,
    or_transpose,
)
from regprim.models.planted import DEFAULT_PLAYERS
from regprim.salient import removal_salient, select_salient
from regprim.stability import compare, jaccard, stability

PLANTED = [1, 2, 6, 9, 48, 33]


def test_or_transpose_is_the_adjoint():
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randn(64, 5, dtype=torch.float64)
    lhs = (or_interactions(x) * y).sum()
    rhs = (x * or_transpose(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-10
    t = torch.randn(16, 3, dtype=torch.float64)
    dense = torch.stack([moebius_(e.clone()) for e in torch.eye(16, dtype=torch.float64)], 1)
    torch.testing.assert_close(moebius_superset_(t.clone()), dense.T @ t)


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


def test_salient_rules_on_hand_made_components():
    comps = torch.zeros(8, 4)
    comps[1, 0], comps[2, 1], comps[7, 2] = 3.0, 2.0, 0.5
    assert select_salient(comps, 10.0, "tau", tau=0.1).tolist() == [1, 2]
    assert select_salient(comps, 10.0, "top", top=0.6).tolist() == [1, 2]
    with pytest.raises(ValueError, match="salient rule 'x'"):
        select_salient(comps, 1.0, "x")


def test_removal_rule_stops_when_the_image_matches_the_baseline():
    # identity "generator": the image is the feature; players cover everything
    comps = torch.zeros(8, 1, 2, 2)
    comps[1, 0, 0, 0], comps[2, 0, 0, 1], comps[4, 0, 1, 0] = 10.0, 3.0, 0.1
    masks = torch.ones(3, 2, 2, dtype=torch.bool)
    f0 = torch.zeros(1, 2, 2)
    # squared distance to the baseline: none removed 109.01, after one 9.01, after two 0.01
    assert removal_salient(comps, f0, lambda f: f, masks, threshold=0.1).tolist() == [1]
    assert removal_salient(comps, f0, lambda f: f, masks, threshold=0.05).tolist() == [1, 2]


def test_planted_explain_with_each_salient_rule():
    base = dict(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=100)
    run = explain(ExplainConfig(**base, salient_rule="removal"), verify=False, progress=False)
    counts = run.summary["salient_counts"]
    assert counts["tau"] == 8 and counts["removal"] <= 8 and counts["top"] == 307
    assert len(run.summary["salient"]) == counts["removal"]


def test_compare_and_jaccard():
    assert jaccard(0b011, 0b110) == 1 / 3
    a = torch.zeros(8, 3)
    a[1, 0], a[2, 1], a[5, 2] = 3.0, 2.0, 1.0
    same = compare(a, a.clone(), k=3)
    assert same == {"matched_cosine": 1.0, "matched_region_jaccard": 1.0, "topk_set_jaccard": 1.0}
    b = torch.zeros(8, 3)
    b[1, 0], b[3, 1], b[4, 2] = 3.0, 2.0, 1.0  # component 2 moved to mask 3, 5 to 4
    r = compare(a, b, k=3)
    assert r["matched_cosine"] == 1.0
    assert r["matched_region_jaccard"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert r["topk_set_jaccard"] == pytest.approx(1 / 5)


def test_stability_on_planted_is_perfect():
    cfg = ExplainConfig(
        model="planted", players=list(DEFAULT_PLAYERS), baseline_count=100, denoise_steps=50
    )
    result = stability(cfg, repeats=1, k=8, generator=load_model("planted"))
    for name in ("raw", "denoised"):
        assert result[name]["matched_cosine"] > 0.999
        assert result[name]["topk_set_jaccard"] == 1.0
    assert result["raw"]["sparsity"]["fraction_carrying_90pct"] <= 8 / 511
