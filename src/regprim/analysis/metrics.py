"""Faithfulness metrics: each claim of the paper as a number (definitions: docs/metrics.md).

Every metric declares its name, what it measures and whether higher is better (``None`` for a
descriptive number), carries one headline ``value`` and a ``details`` dict with the curves and
per-cell numbers. :func:`evaluate` computes them all from a run and the generator that made it,
together with the images the paper's figures show (:class:`Evaluation`), so that
:mod:`regprim.present.figures` only draws arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from regprim.analysis.scorer import Metric, Scorer
from regprim.core.reconstruction import reconstruct_features
from regprim.core.salient import energy_count, energy_fraction
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator

FIG3_RATIOS = [0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]


@dataclass
class Evaluation:
    """The metrics of a run and the rendered images its figures show.

    Attributes:
        metrics: in the order of docs/metrics.md.
        images: ``{name: (k, C, H, W)}``: ``fig3`` (incremental reconstruction at
            ``FIG3_RATIOS``), ``fig6``, ``fig7a``, ``fig7b`` (the first target's
            reconstruction at every ratio of ``RATIOS``), ``fig8`` (f with other codes).
        fig3: counts, relative errors and action-region weights of the ``fig3`` images.
    """

    metrics: list[Metric]
    images: dict[str, Tensor]
    fig3: dict[str, Any]

    def by_name(self) -> dict[str, Metric]:
        return {m.name: m for m in self.metrics}


def requirement_2_alpha(s: Scorer) -> tuple[Metric, Tensor]:
    d, images = s.curves([1 << i for i in range(s.n)], meeting=True)
    metric = Metric(
        "requirement_2_alpha",
        "Eq. 6 / Fig. 7a: error of g(f0 + components covering cell i) on cell i, relative to "
        "the baseline image's error there (mean over player cells; 0 = exact)",
        False,
        d.pop("mean"),
        d,
    )
    return metric, images


def requirement_2_beta(s: Scorer, sets: int = 16, seed: int = 0) -> tuple[Metric, Tensor]:
    rng = torch.Generator().manual_seed(seed)
    targets = sorted({int(t) for t in torch.randint(1, 2**s.n, (sets,), generator=rng)})
    d, images = s.curves(targets, meeting=True)
    metric = Metric(
        "requirement_2_beta",
        "Eq. 7 / Fig. 7b: error of g(f0 + components meeting S) on the cells of S for random "
        "sets S, relative to the baseline image's error (mean; 0 = exact)",
        False,
        d.pop("mean"),
        d,
    )
    return metric, images


def irrelevant_components(s: Scorer) -> tuple[Metric, Tensor]:
    d, images = s.curves([1 << i for i in range(s.n)], meeting=False, rebuilt=True)
    metric = Metric(
        "irrelevant_components",
        "Fig. 6: how much of cell i the components NOT covering it reconstruct, "
        "1 - error / baseline error (mean over cells, all of them added; should stay near 0)",
        False,
        d.pop("mean"),
        d,
    )
    return metric, images


def worst_point(curve_metric: Metric, name: str, what: str) -> Metric:
    """The worst point along p of a curve metric (p = 1 alone can hide a failure on the way)."""
    return Metric(
        name,
        f"{what}: the worst point over the cells and every ratio p (details: area under the "
        "mean curve)",
        False,
        curve_metric.details["worst"],
        {"auc": curve_metric.details["auc"], "of": curve_metric.name},
    )


def leakage(
    s: Scorer, salient: list[int], top: int = 24, contexts: int = 8, seed: int = 0
) -> Metric:
    full = 2**s.n - 1
    chosen = [k for k in salient if k != full and k in s.position][:top]
    rng = torch.Generator().manual_seed(seed)
    others = s.ordered
    pixels = s.cell_masks.flatten(1).sum(1).to(s.x.dtype)
    ratios: list[list[float]] = []
    for k in chosen:
        include = torch.rand(contexts, len(s.order), generator=rng) < 0.5
        include[:, s.order == k] = False
        context = reconstruct_features(others, s.f0, include)  # F(Omega), Omega without k
        before = s.render(context)
        after = s.render(context + s.ordered[s.position[k]])
        change = ((after - before) ** 2).sum(1).flatten(1)  # (R, H*W)
        inside = torch.tensor([k >> i & 1 for i in range(s.n)], device=s.x.device).bool()
        per_cell = change @ s.cell_masks.flatten(1).to(change.dtype).T  # (R, n)
        out_mean = per_cell[:, ~inside].sum(1) / pixels[~inside].sum()
        in_mean = per_cell[:, inside].sum(1) / pixels[inside].sum()
        ratios.append((out_mean / in_mean.clamp_min(1e-30)).tolist())
    flat = sorted(r for rs in ratios for r in rs)
    note = (
        ""
        if flat
        else (
            "n = 1: no player cell lies outside an action region, so leakage is undefined"
            if s.n == 1
            else "no salient component with cells outside its action region"
        )
    )
    by_order: dict[int, list[float]] = {}
    for k, rs in zip(chosen, ratios, strict=True):
        by_order.setdefault(k.bit_count(), []).extend(rs)
    return Metric(
        "leakage",
        "Eq. 5 / Requirement 1: mean squared change that adding a salient component to a "
        "random context F(Omega) causes on player cells outside its action region, over the "
        "change inside it (median; 0 = exclusive)",
        False,
        _median(flat) if flat else float("nan"),
        {
            "components": chosen,
            "contexts": contexts,
            "ratios": ratios,
            "median_by_order": {str(o): _median(v) for o, v in sorted(by_order.items())},
            "quantiles": {str(q): _quantile(flat, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
            if flat
            else {},
            "note": note,
        },
    )


def sparsity(s: Scorer, salient: list[int]) -> Metric:
    count = 2**s.n - 1
    values, norms = s.run.table.values, s.run.table.norms
    mags = values.abs().flatten()
    mags = mags[mags > 0].sort(descending=True).values
    elements = count * math.prod(s.run.table.feature_shape)  # the components not held are 0
    # 400 ranks spaced evenly on a log axis (float64: float32 rounds past 2**24)
    ranks = torch.logspace(0, math.log10(max(len(mags), 1)), 400, dtype=torch.float64)
    points = (ranks.round().long().unique() - 1).clamp(0, max(len(mags) - 1, 0))
    return Metric(
        "sparsity",
        "Fig. 5: fraction of the components that carry 90% of the total squared norm "
        "(smaller = sparser); also the fraction above the salient threshold",
        False,
        energy_fraction(norms, count),
        {
            "fraction_salient": len(salient) / count,
            "components": count,
            "sorted_magnitudes": {
                "elements": elements,
                "nonzero": len(mags),
                "rank": (points + 1).tolist() if len(mags) else [],
                "magnitude": mags[points.to(mags.device)].tolist() if len(mags) else [],
            },
            "norms_sorted": norms.sort(descending=True).values[: len(s.order)].tolist(),
        },
    )


def energy_components(s: Scorer) -> Metric:
    """Fig. 5 as a count, which means the same at any n (the fraction of ``2**n - 1`` is 1e-9
    at the whole grid whatever the components do)."""
    table = s.run.table
    return Metric(
        "energy_90",
        "Fig. 5 as a count: how many components carry 90% of the total squared norm",
        False,
        float(energy_count(table.norms)),
        {"nonzero_components": len(table), "players": s.n},
    )


CODE_INFLUENCE_WARN = 0.1  # above it, a run's summary and report carry a warning


def metric_warnings(metrics: list[Metric]) -> list[str]:
    """Warnings a run's metrics call for: ``g`` that depends on the code (a cut the code
    reaches around) makes the primitives explain f only given the target's code."""
    by_name = {m.name: m for m in metrics}
    influence = by_name.get("code_influence")
    if influence is None or influence.value <= CODE_INFLUENCE_WARN:
        return []
    return [
        f"code_influence {influence.value:.3g} > {CODE_INFLUENCE_WARN}: rendered with other "
        "codes, the same feature f changes the player cells that much (relative to the target's "
        "change from the baseline); the code reaches g around the cut, so the primitives are "
        "not the whole cause of the image (docs/models.md)"
    ]


def code_influence(s: Scorer, codes: int = 8, seed: int = 1) -> tuple[Metric, Tensor]:
    others = s.gen.sample_codes(codes, 10_000 + seed, s.run.class_index)
    with torch.no_grad():
        images = torch.cat([s.gen.g(s.f[None], c[None]) for c in others])
    change = s.cell_errors(images).sum(1)  # squared change from x on the player cells
    base = s.base_err.sum().clamp_min(1e-30)
    note = "" if s.gen.sees_code else "g does not see the code: zero by construction"
    metric = Metric(
        "code_influence",
        "Fig. 8 / Appendix F: squared change on the player cells when the same feature f is "
        "rendered with other codes, relative to the target-vs-baseline error there",
        False,
        float((change / base).mean()),
        {"per_code": (change / base).tolist(), "sees_code": s.gen.sees_code, "note": note},
    )
    return metric, images


def region_weights(run: Run, ks: list[int]) -> list[float]:
    """Appendix H: per player cell, the sum of ``||Delta f_k||_1 / |S_k|`` over ``ks``."""
    l1 = run.component(ks).flatten(1).abs().sum(1).tolist()
    weights = [0.0] * run.n
    for k, size in zip(ks, l1, strict=True):
        for i in range(run.n):
            if k >> i & 1:
                weights[i] += size / k.bit_count()
    return weights


def action_regions(s: Scorer, salient: list[int]) -> Metric:
    weights = torch.tensor(region_weights(s.run, salient))
    share = weights / weights.sum().clamp_min(1e-30)
    return Metric(
        "action_region_distribution",
        "Appendix H: per player cell, the sum over salient components covering it of "
        "L1 norm / |S_k|; the value is the largest cell's share",
        None,
        float(share.max()) if len(share) else 0.0,
        {"per_cell": weights.tolist(), "share": share.tolist(), "players": s.run.players},
    )


def minimal_feature_quality(run: Run) -> Metric:
    masks, rel = run.checked
    sizes = torch.tensor([int(m).bit_count() for m in masks])
    details: dict[str, Any] = {
        "max_rel_error_by_size": {str(int(k)): float(rel[sizes == k].max()) for k in sizes.unique()}
    }
    which = f"{len(masks)} held-out subsets the solver never sampled"
    u = run.minimal_features
    if u is not None:  # every subset is stored: also the size of its change
        which = "every subset"
        size = (u - run.f0).abs().flatten(1).sum(1)
        levels = torch.tensor([s.bit_count() for s in range(2**run.n)])
        details["l1_by_size"] = {str(k): float(size[levels == k].mean()) for k in range(run.n + 1)}
    return Metric(
        "minimal_feature_quality",
        f"Eq. 8: worst relative masked reconstruction error of u(S) on the cells of S over {which} "
        "(details: worst error by |S| and, where stored, the L1 size of u(S) - f0 by |S|)",
        False,
        float(rel.max()),
        details,
    )


def incremental(s: Scorer, target: int) -> tuple[dict[str, Any], Tensor]:
    """Fig. 3: the target cells reconstructed as the components meeting them are added
    (largest first), with the action-region weights of the added components."""
    images, chosen = s.ratio_images(target, FIG3_RATIOS)
    meeting = [int(k) for k in s.order if int(k) & target]
    counts = chosen.sum(1).tolist()
    data = {
        "target": target,
        "ratios": FIG3_RATIOS,
        "counts": counts,
        "meeting": len(meeting),
        "rel_errors": s.set_rel_error(images, target).tolist(),
        "weights": [region_weights(s.run, meeting[:c]) for c in counts],
    }
    return data, images


def evaluate(run: Run, gen: SplitGenerator) -> Evaluation:
    """Every metric of a run, in the order of docs/metrics.md, and the figures' images."""
    s = Scorer(run, gen)
    salient = run.salient
    alpha, alpha_images = requirement_2_alpha(s)
    beta, beta_images = requirement_2_beta(s)
    irrelevant, irrelevant_images = irrelevant_components(s)
    influence, code_images = code_influence(s)
    fig3, fig3_images = incremental(s, 0b11 if s.n >= 2 else 0b1)
    metrics = [
        alpha,
        worst_point(
            alpha, "requirement_2_alpha_worst", "Fig. 7a: error / baseline error on cell i"
        ),
        beta,
        irrelevant,
        worst_point(irrelevant, "irrelevant_components_worst", "Fig. 6: |1 - error / baseline|"),
        leakage(s, salient),
        sparsity(s, salient),
        energy_components(s),
        influence,
        action_regions(s, salient),
        minimal_feature_quality(run),
    ]
    images = {
        "fig3": fig3_images,
        "fig6": irrelevant_images,
        "fig7a": alpha_images,
        "fig7b": beta_images,
        "fig8": code_images,
    }
    return Evaluation(metrics, {k: v.cpu() for k, v in images.items()}, fig3)


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def _median(values: list[float]) -> float:
    return _quantile(values, 0.5)
