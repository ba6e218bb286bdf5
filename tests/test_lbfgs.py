"""The batched projected L-BFGS on problems whose minimiser is known in closed form."""

import torch

from regprim.solvers.lbfgs import kkt_residual, projected_lbfgs


def box_quadratic(c: torch.Tensor, t: torch.Tensor, a: torch.Tensor):
    """F(alpha) = sum a alpha + sum c (alpha - t)^2 per row: minimiser clip(t - a / 2c)."""

    def value_grad(alpha, idx):
        value = (a[idx] * alpha + c[idx] * (alpha - t[idx]) ** 2).sum(1)
        return value, a[idx] + 2 * c[idx] * (alpha - t[idx])

    return value_grad, (t - a / (2 * c)).clamp(0, 1)


def test_separable_box_problems_badly_scaled_converge_to_their_minimisers():
    gen = torch.Generator().manual_seed(0)
    rows, dim = 5, 40
    c = 10 ** (6 * torch.rand(rows, dim, generator=gen))  # curvatures 1 .. 1e6
    t = 1.5 * torch.rand(rows, dim, generator=gen) - 0.25  # some optima outside the box
    a = torch.rand(rows, dim, generator=gen)
    value_grad, best = box_quadratic(c, t, a)
    live = torch.ones(1, dim, dtype=torch.bool)
    r = projected_lbfgs(value_grad, torch.ones(rows, dim), live, 2 * c, 1e-12, 1e-7, 100)
    assert r.converged.all()
    torch.testing.assert_close(r.alpha, best, atol=1e-4, rtol=0)


def test_coupled_problem_against_its_exact_solution():
    """F = a.alpha + ||J alpha - y||^2 with an interior minimiser: alpha* = J^-1 (y - J^-T a/2)."""
    gen = torch.Generator().manual_seed(1)
    dim = 6
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    j = q @ torch.diag(torch.logspace(0, 2, dim, dtype=torch.float64)) @ q.T
    best = 0.2 + 0.6 * torch.rand(dim, generator=gen, dtype=torch.float64)
    a = torch.rand(dim, generator=gen, dtype=torch.float64)
    y = j @ best + torch.linalg.solve(j.T, a) / 2  # so that the gradient vanishes at best

    def value_grad(alpha, idx):
        r = alpha @ j.T - y
        return (alpha * a).sum(1) + (r**2).sum(1), a + 2 * r @ j

    live = torch.ones(1, dim, dtype=torch.bool)
    curvature = 2 * (j**2).sum(0).expand(1, dim)
    start = torch.ones(1, dim, dtype=torch.float64)
    r = projected_lbfgs(value_grad, start, live, curvature, 1e-15, 1e-9, 200)
    torch.testing.assert_close(r.alpha[0], best, atol=1e-6, rtol=0)
    _, grad = value_grad(r.alpha, torch.tensor([0]))
    assert kkt_residual(r.alpha, grad, live, curvature) < 1e-6


def test_numbers_that_are_not_live_keep_their_start_and_caps_are_reported():
    c = torch.ones(2, 3)
    t = torch.full((2, 3), 0.5)
    value_grad, _ = box_quadratic(c, t, torch.zeros(2, 3))
    live = torch.tensor([[True, False, True]])
    start = torch.full((2, 3), 0.9)
    r = projected_lbfgs(value_grad, start, live, 2 * c, 0.0, 0.0, 1)
    assert (r.alpha[:, 1] == 0.9).all()
    assert not r.converged.any() and (r.steps == 1).all()


def test_a_start_near_the_minimiser_stops_by_the_gradient_test_alone():
    """With ftol = 0 only the KKT test (gtol) can stop a row that still makes progress: a start
    just off the minimiser, whose residual is already below gtol, stops there at once."""
    c = torch.ones(1, 3)
    t = torch.full((1, 3), 0.5)
    value_grad, best = box_quadratic(c, t, torch.zeros(1, 3))
    live = torch.ones(1, 3, dtype=torch.bool)
    start = best + 1e-3
    _, grad = value_grad(start, torch.tensor([0]))
    assert 0 < float(kkt_residual(start, grad, live, 2 * c)) < 0.1
    r = projected_lbfgs(value_grad, start, live, 2 * c, 0.0, 0.1, 5)
    assert r.converged.all() and int(r.steps[0]) == 0
    torch.testing.assert_close(r.alpha, start)  # it did not move
