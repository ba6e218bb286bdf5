"""Metrics with exactly known values: the planted run, and hand-made components."""

import dataclasses

import torch

from regprim import load_model
from regprim.analysis.metrics import action_regions, energy_components, sparsity
from regprim.analysis.scorer import Scorer


def by_name(run):
    return {m.name: m for m in run.metrics}


def test_planted_metrics_have_their_exact_values(planted_run):
    m = by_name(planted_run)
    assert m["requirement_2_alpha"].value < 1e-6  # full reconstruction of every cell
    assert m["requirement_2_beta"].value < 1e-6
    assert m["leakage"].value < 1e-4  # planted primitives are exclusive
    assert abs(m["irrelevant_components"].value) < 1e-2
    assert m["code_influence"].value == 0.0
    assert m["code_influence"].details["note"].startswith("g does not see the code")
    # 8 planted of 511 components; 90% of the energy needs at most all 8 of them
    assert m["sparsity"].value <= 8 / 511
    assert m["sparsity"].details["fraction_salient"] == 8 / 511
    assert 1 <= m["energy_90"].value <= 8
    for metric in planted_run.metrics:
        assert metric.description and metric.higher_is_better in (True, False, None)


def test_a_curves_worst_point_is_over_the_points_that_add_components(planted_run):
    """Before any component is added the image is the baseline's (relative error 1 by
    definition): the worst point is taken where components were added, by brute force here."""
    from regprim.analysis.scorer import RATIOS

    s = Scorer(planted_run, load_model("planted"))
    targets = [1 << i for i in range(s.n)]
    details, _ = s.curves(targets, meeting=True)
    assert all(abs(c[0] - 1) < 1e-4 for c in details["curves"])  # p = 0: the baseline image
    points = []
    for target, curve in zip(details["targets"], details["curves"], strict=True):
        _, chosen = s.ratio_images(target, RATIOS, True)
        points += [v for v, n in zip(curve, chosen.sum(1).tolist(), strict=True) if n > 0]
    assert details["worst"] == max(points) < 1  # the planted cells only get better


def test_sparsity_and_action_regions_on_hand_made_components(planted_run):
    comps = torch.zeros_like(planted_run.components)
    comps[0b1, 0, 0] = 3.0  # norm 3, order 1, L1 3
    comps[0b110, 1, :] = torch.tensor([1.0, 0, 0, 0])  # norm 1, order 2, L1 1
    run = dataclasses.replace(planted_run, tensors=planted_run.tensors | {"components": comps})
    s = Scorer(run, load_model("planted"))
    assert s.order.tolist() == [0b1, 0b110]
    m = sparsity(s, [0b1, 0b110])
    assert m.value == 1 / 511  # 9 of 10 units of squared norm sit in one component
    assert m.details["fraction_salient"] == 2 / 511
    assert energy_components(s).value == 1  # the same fact as a count, for any n
    comps = comps.clone()
    comps[0b110, 1, :] = torch.tensor([3.0, 0, 0, 0])  # now 9 + 9 units: both are needed
    even = Scorer(dataclasses.replace(run, tensors=run.tensors | {"components": comps}), s.gen)
    assert energy_components(even).value == 2
    a = action_regions(s, [0b1, 0b110])
    assert a.details["per_cell"][:3] == [3.0, 0.5, 0.5] and a.value == 3 / 4
