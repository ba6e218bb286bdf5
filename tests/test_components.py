"""The component table against brute force: row alignment, lookups by action set, selections."""

import pytest
import torch

from regprim.core.components import ComponentTable
from regprim.core.reconstruction import selection


def random_dense(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    comps = torch.randn(2**n, 3, 2, generator=g)
    comps[0] = 0
    comps[0b0101] = 0  # a zero component: held, but not ranked
    return comps


def test_dense_rows_are_aligned_and_looked_up_by_bitmask():
    comps = random_dense()
    t = ComponentTable.from_dense(comps)
    assert t.n == 4 and len(t) == 15 and t.masks.tolist() == list(range(1, 16))
    for mask in range(1, 16):
        j = t.row(mask)
        assert torch.equal(t.values[j], comps[mask])
        assert t.norm(mask) == pytest.approx(float(comps[mask].norm()))
        assert t.orders[j] == mask.bit_count()
    assert torch.equal(t.value([3, 0b0101, 1]), torch.stack([comps[3], comps[5], comps[1]]))
    assert t.dense() is comps  # the dense view of a dense table is not a copy


def test_ranking_and_selections_match_brute_force():
    comps = random_dense(seed=1)
    t = ComponentTable.from_dense(comps)
    norms = {m: float(comps[m].norm()) for m in range(1, 16) if comps[m].norm() > 0}
    brute = sorted(norms, key=lambda m: -norms[m])
    assert t.ranked == brute and t.top_k(3) == brute[:3] and 0b0101 not in t.ranked
    for target in range(1, 16):
        assert t.meeting(target) == [m for m in brute if m & target]
        assert t.covering(target) == [m for m in brute if m | target == m]
        # Algorithm 2's selection over the ranked list chooses exactly the meeting components
        chosen = selection(torch.tensor(t.ranked), torch.tensor([target]))[0]
        assert [m for m, c in zip(t.ranked, chosen.tolist(), strict=True) if c] == t.meeting(target)
    for order in range(1, 5):
        assert t.by_order(order) == [m for m in brute if m.bit_count() == order]
    assert t.players(0b1010) == (1, 3)
    assert torch.allclose(t.total(), comps.sum(0))


def test_a_sparse_table_answers_like_its_dense_view():
    masks = torch.tensor([0b100, 0b1, 0b11])
    values = torch.tensor([[2.0, 0.0], [0.0, -5.0], [1.0, 1.0]])
    t = ComponentTable(masks, values, n=3)
    dense = t.dense()
    assert dense.shape == (8, 2) and torch.equal(dense[0b100], values[0]) and not dense[2].any()
    assert t.ranked == [0b1, 0b100, 0b11] == ComponentTable.from_dense(dense).ranked
    assert t.norm(0b10) == 0.0 and t.row(0b10) is None
    assert not t.value([0b10]).any()


def test_bad_tables_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="2 action sets for 3 component rows"):
        ComponentTable(torch.tensor([1, 2]), torch.zeros(3, 2), n=2)
    with pytest.raises(ValueError, match="non-empty bitmasks of 2 players"):
        ComponentTable(torch.tensor([0, 1]), torch.zeros(2, 2), n=2)
    with pytest.raises(ValueError, match="2\\*\\*n rows"):
        ComponentTable.from_dense(torch.zeros(6, 2))
    with pytest.raises(ValueError, match="dense view of n = 36"):
        ComponentTable(torch.tensor([1 << 35]), torch.ones(1, 2), n=36).dense()


def test_a_run_reads_its_components_through_one_table(planted_run):
    t = planted_run.table
    assert planted_run.ranked == t.ranked
    top = planted_run.top(3)
    for mask in top:
        assert planted_run.norm(mask) == t.norm(mask) > 0
        assert torch.equal(planted_run.components[mask], t.value([mask])[0])
    masks, rel = planted_run.checked
    assert len(masks) == len(rel) == 2**planted_run.n - 1
