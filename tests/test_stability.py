"""The stability measurement: matching of components between runs."""

import pytest
import torch

from regprim import ComponentTable, ExplainConfig, load_model
from regprim.generators.planted import DEFAULT_PLAYERS
from regprim.pipeline.stability import compare, jaccard, stability


def test_compare_and_jaccard():
    assert jaccard(0b011, 0b110) == 1 / 3
    a = torch.zeros(8, 3)
    a[1, 0], a[2, 1], a[5, 2] = 3.0, 2.0, 1.0

    def listed(c):
        return ComponentTable.from_dense(c)

    same = compare(listed(a), listed(a.clone()), k=3)
    assert same == {"matched_cosine": 1.0, "matched_region_jaccard": 1.0, "topk_set_jaccard": 1.0}
    b = torch.zeros(8, 3)
    b[1, 0], b[3, 1], b[4, 2] = 3.0, 2.0, 1.0  # component 2 moved to mask 3, 5 to 4
    r = compare(listed(a), listed(b), k=3)
    assert r["matched_cosine"] == 1.0
    assert r["matched_region_jaccard"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert r["topk_set_jaccard"] == pytest.approx(1 / 5)


def test_a_component_that_trades_rank_k_for_k_plus_1_is_still_matched():
    a = torch.zeros(8, 6)
    a[1, 0], a[2, 1], a[4, 2], a[7, 3] = 4.0, 3.0, 2.0, 1.9
    b = a.clone()
    b[4, 2], b[7, 3] = 1.9, 2.0  # the 3rd and 4th largest swap ranks, values near unchanged
    r = compare(ComponentTable.from_dense(a), ComponentTable.from_dense(b), k=3)
    assert r["matched_cosine"] == pytest.approx(1.0)  # the 3rd is found at rank 4
    assert r["matched_region_jaccard"] == 1.0
    assert r["topk_set_jaccard"] == pytest.approx(2 / 4)  # the rank swap itself is counted
    unrelated = torch.zeros(8, 6)  # the same action sets, other numbers
    unrelated[1, 4], unrelated[2, 5], unrelated[4, 4:] = 4.0, 3.0, 2.0
    assert (
        compare(ComponentTable.from_dense(a), ComponentTable.from_dense(unrelated), k=3)[
            "matched_cosine"
        ]
        < 0.5
    )


def test_stability_on_planted_is_perfect():
    cfg = ExplainConfig(
        model="planted", players=list(DEFAULT_PLAYERS), baseline_count=100, denoise_steps=50
    )
    result = stability(cfg, repeats=1, k=8, generator=load_model("planted"))
    for name in ("raw", "denoised"):
        assert result[name]["matched_cosine"] > 0.999
        assert result[name]["topk_set_jaccard"] == 1.0
    assert result["raw"]["sparsity"]["fraction_carrying_90pct"] <= 8 / 511
