"""Algorithm 2: the one implementation, against the literal loop of the paper's pseudocode."""

import math

import torch

from regprim import load_model
from regprim.core.reconstruction import reconstruct_features, selection


def algorithm_2(components, f0, masks, target):
    """Appendix E, literally: f <- f0; add each component whose action region meets S."""
    f = f0.clone()
    for k, comp in zip(masks, components, strict=True):
        if k & target:
            f = f + comp
    return f


def test_selection_and_features_equal_the_paper_loop():
    gen = torch.Generator().manual_seed(0)
    masks = torch.tensor([5, 1, 12, 3, 8, 6])  # largest norm first
    comps = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    f0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    targets = torch.arange(16)
    got = reconstruct_features(comps, f0, selection(masks, targets))
    for t in range(16):
        torch.testing.assert_close(got[t], algorithm_2(comps, f0, masks.tolist(), t))


def test_ratio_keeps_the_largest_fraction_of_the_candidates():
    masks = torch.tensor([1, 2, 3, 4, 5, 7])
    target = torch.tensor([0b001])  # met by 1, 3, 5, 7 (in this order)
    for p in (0.0, 0.25, 0.3, 0.5, 0.75, 1.0):
        chosen = selection(masks, target, p)[0]
        keep = math.ceil(round(p * 4, 9))
        assert torch.nonzero(chosen).flatten().tolist() == [0, 2, 4, 5][:keep], p
    # the components that do NOT meet the target (Fig. 6): 2 and 4
    assert torch.nonzero(selection(masks, target, meeting=False)[0]).flatten().tolist() == [1, 3]


def test_run_reconstruct_renders_the_salient_components_meeting_the_cells(planted_run):
    run = planted_run
    gen = load_model("planted")
    cells = [run.players[0], run.players[4]]
    image, count = run.reconstruct(cells, gen)
    target = run.bitmask(cells)
    meeting = [k for k in run.salient if k & target]
    assert count == len(meeting)
    f_hat = run.f0 + sum(run.components[k] for k in meeting)
    with torch.no_grad():
        torch.testing.assert_close(image, gen.g(f_hat[None], run.code)[0])
