import pytest
import torch

from regprim.core.interactions import (
    matched_features,
    moebius_,
    moebius_superset_,
    or_interactions,
    or_interactions_reference,
    or_transpose,
    universal_matching_residual,
    zeta_,
)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_fast_or_transform_equals_brute_force(n):
    gen = torch.Generator().manual_seed(n)
    u = torch.randn(2**n, 3, 4, generator=gen, dtype=torch.float64)
    fast = or_interactions(u.clone())
    slow = or_interactions_reference(u)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    assert torch.all(fast[0] == 0)


def test_fast_or_transform_does_not_modify_input():
    u = torch.randn(16, 5, dtype=torch.float64)
    before = u.clone()
    or_interactions(u)
    assert torch.equal(u, before)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_universal_matching_holds_exactly(n):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2**n, 7, generator=gen, dtype=torch.float64)
    f0 = u[0]
    comps = or_interactions(u)
    assert universal_matching_residual(u, comps, f0).max() < 1e-12
    # and the literal statement: u(S) = f0 + sum over k with S_k meeting S of Delta f_k
    for s in [1, 2**n - 1, (2**n - 1) // 3 or 1]:
        direct = f0 + sum(comps[k] for k in range(1, 2**n) if k & s)
        torch.testing.assert_close(direct, u[s])


def test_universal_matching_detects_a_wrong_decomposition():
    u = torch.randn(8, 3, dtype=torch.float64)
    comps = or_interactions(u)
    comps[3] += 0.5
    assert universal_matching_residual(u, comps, u[0]).max() > 0.01


def test_single_planted_or_term_is_recovered_exactly():
    # u(S) = f0 + v if S meets T, else f0: one OR component v at T, all others zero.
    n, target = 5, 0b01011
    f0, v = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    u = torch.stack([f0 + v if s & target else f0 for s in range(2**n)])
    comps = or_interactions(u)
    torch.testing.assert_close(comps[target], v)
    others = torch.cat([comps[:target], comps[target + 1 :]])
    assert others.abs().max() < 1e-12


def test_zeta_inverts_moebius():
    t = torch.randn(64, 3, dtype=torch.float64)
    torch.testing.assert_close(zeta_(moebius_(t.clone())), t)


def test_matched_features_shape_and_empty_set():
    u = torch.randn(32, 2, 3)
    comps = or_interactions(u)
    m = matched_features(comps, u[0])
    assert m.shape == u.shape
    torch.testing.assert_close(m[0], u[0])


def test_subset_axis_must_be_power_of_two():
    with pytest.raises(ValueError, match="2\\*\\*n"):
        or_interactions(torch.zeros(6, 2))


def test_or_transpose_is_the_adjoint():
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randn(64, 5, dtype=torch.float64)
    lhs = (or_interactions(x) * y).sum()
    rhs = (x * or_transpose(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-10
    t = torch.randn(16, 3, dtype=torch.float64)
    dense = torch.stack([moebius_(e.clone()) for e in torch.eye(16, dtype=torch.float64)], 1)
    torch.testing.assert_close(moebius_superset_(t.clone()), dense.T @ t)
