"""Feature components as OR interactions (Eq. 10) and the universal-matching check (Thm 3.3).

``Delta f_k = I_or(S_k) = - sum_{S' subset of S_k} (-1)^(|S_k|-|S'|) u(N \\ S')`` for non-empty
``S_k``. With ``w(T) = u(N \\ T)``, ``I_or(S) = -Moebius_w(S)``. Subsets are bitmasks, so
``N \\ T`` is ``(2**n - 1) - T`` and ``w`` is ``u`` reversed along the subset axis. The fast
transform is the in-place butterfly over bits, ``O(n 2**n D)``, vectorised over ``D``; the
powerset double loop in :func:`or_interactions_reference` is the slow twin used in tests.
:func:`or_transpose` (the adjoint, by the superset butterfly) gives the subgradients of the noise
removal in :mod:`regprim.solvers.denoise`.
"""

from __future__ import annotations

from torch import Tensor


def players_of(size: int) -> int:
    """n for a subset axis of length ``2**n`` (error otherwise)."""
    n = size.bit_length() - 1
    if size < 1 or 1 << n != size:
        msg = f"subset axis has length {size}; it must be 2**n (all subsets of n players)"
        raise ValueError(msg)
    return n


def _butterfly_(t: Tensor, sign: float, superset: bool) -> Tensor:
    """In place over axis 0 (length 2**n), bit by bit: each subset with the bit set gets
    ``sign`` times its partner without it added (or, with ``superset``, the other way round)."""
    n = players_of(t.shape[0])
    flat = t.view(t.shape[0], -1)
    for i in range(n):
        v = flat.view(2 ** (n - i - 1), 2, 2**i, -1)
        target, source = (v[:, 0], v[:, 1]) if superset else (v[:, 1], v[:, 0])
        target.add_(source, alpha=sign)
    return t


def moebius_(t: Tensor) -> Tensor:
    """In place: ``t[S] <- sum_{T subset of S} (-1)^(|S|-|T|) t[T]`` over axis 0 (length 2**n)."""
    return _butterfly_(t, -1.0, superset=False)


def zeta_(t: Tensor) -> Tensor:
    """In place: ``t[S] <- sum_{T subset of S} t[T]`` over axis 0 (inverse of :func:`moebius_`)."""
    return _butterfly_(t, 1.0, superset=False)


def moebius_superset_(t: Tensor) -> Tensor:
    """In place: ``t[T] <- sum_{S superset of T} (-1)^(|S|-|T|) t[S]`` (the transpose of
    :func:`moebius_`)."""
    return _butterfly_(t, -1.0, superset=True)


def or_transpose(y: Tensor) -> Tensor:
    """The adjoint of :func:`or_interactions` applied to ``y`` (``(2**n, ...)``)."""
    y = y.clone()
    y[0] = 0
    moebius_superset_(y)
    return -y.flip(0)


def or_interactions(u: Tensor) -> Tensor:
    """All feature components from all minimal features.

    Args:
        u: minimal features ``(2**n, *feature_shape)`` in bitmask order, ``u[0] = f0``.

    Returns:
        components ``(2**n, *feature_shape)``; row 0 (the empty set) is zero.
    """
    w = u.flip(0).contiguous()
    moebius_(w)
    w.neg_()
    w[0] = 0
    return w


def or_interactions_reference(u: Tensor) -> Tensor:
    """Eq. 10 literally, by a powerset double loop (``O(3**n D)``); for tests only."""
    size = u.shape[0]
    full = size - 1
    out = u.new_zeros(u.shape)
    for s in range(1, size):
        for sub in range(size):
            if sub & ~s:
                continue
            sign = (-1) ** (bin(s).count("1") - bin(sub).count("1"))
            out[s] -= sign * u[full ^ sub]
    return out


def matched_features(components: Tensor, f0: Tensor) -> Tensor:
    """Universal matching: ``f0 + sum over k with S_k meeting S of Delta f_k``, for every S.

    ``sum over S_k meeting S = total - sum over S_k inside N \\ S``; the inner sums for all
    subsets are one zeta transform. Returns ``(2**n, *feature_shape)``.
    """
    inside = zeta_(components.clone())
    total = inside[-1].clone()
    return f0 + total - inside.flip(0)


def universal_matching_residual(u: Tensor, components: Tensor, f0: Tensor) -> Tensor:
    """Per subset, ``||matched(S) - u(S)||_2 / ||u(N) - f0||_2`` (0 for an exact decomposition)."""
    scale = (u[-1] - f0).norm().clamp_min(1e-30)
    diff = (matched_features(components, f0) - u).flatten(1)
    return diff.norm(dim=1) / scale
