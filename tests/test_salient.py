"""Salient components (Algorithm 1, Appendix H) and the one ranking by norm."""

import math

import pytest
import torch

from regprim import ExplainConfig, explain
from regprim.core.components import component_norms, ranked
from regprim.core.salient import removal_salient, select_salient
from regprim.generators.planted import DEFAULT_PLAYERS


def listed(comps):
    """A dense (2**n, ...) tensor as the (masks, norms) of its non-empty components."""
    return torch.arange(1, len(comps)), component_norms(comps[1:])


def test_ranking_skips_the_empty_set_and_zeros_and_breaks_ties_by_bitmask():
    comps = torch.zeros(8, 2)
    comps[0, 0] = 9.0  # the empty set is never a component
    comps[3, 0], comps[5, 1], comps[6, 0] = 2.0, 2.0, 3.0
    masks = torch.arange(8)
    assert ranked(masks, component_norms(comps)).tolist() == [6, 3, 5]


def test_salient_rules_on_hand_made_components():
    comps = torch.zeros(8, 4)
    comps[1, 0], comps[2, 1], comps[7, 2] = 3.0, 2.0, 0.5
    assert select_salient(*listed(comps), 10.0, "tau", tau=0.1).tolist() == [1, 2]
    assert select_salient(*listed(comps), 10.0, "top", top=0.6).tolist() == [1, 2]
    with pytest.raises(ValueError, match="salient rule 'x'"):
        select_salient(*listed(comps), 1.0, "x")


def test_removal_rule_stops_when_the_image_matches_the_baseline():
    # identity "generator": the image is the feature; players cover everything
    comps = torch.zeros(8, 1, 2, 2)
    comps[1, 0, 0, 0], comps[2, 0, 0, 1], comps[4, 0, 1, 0] = 10.0, 3.0, 0.1
    masks = torch.ones(3, 2, 2, dtype=torch.bool)
    f0 = torch.zeros(1, 2, 2)
    # squared distance to the baseline: none removed 109.01, after one 9.01, after two 0.01
    assert removal_salient(
        torch.arange(1, 8), comps[1:], f0, lambda f: f, masks, threshold=0.1
    ).tolist() == [1]
    assert removal_salient(
        torch.arange(1, 8), comps[1:], f0, lambda f: f, masks, threshold=0.05
    ).tolist() == [1, 2]


def test_planted_explain_with_each_salient_rule():
    base = dict(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=100)
    run = explain(ExplainConfig(**base, salient_rule="removal"), verify=False, progress=False)
    counts = run.summary["salient_counts"]
    assert counts["tau"] == 8 and counts["removal"] <= 8
    assert counts["top"] == math.ceil(0.6 * len(run.ranked))  # of the non-zero components
    assert len(run.summary["salient"]) == counts["removal"]


def test_tau_rule_is_strict():
    """A component whose norm equals tau * ||f - f0|| exactly is not salient (> not >=)."""
    comps = torch.zeros(4, 2)
    comps[1, 0], comps[2, 1] = 3.0, 2.0
    assert select_salient(*listed(comps), 20.0, "tau", tau=0.1).tolist() == [1]
