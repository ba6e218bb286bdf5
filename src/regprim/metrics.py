"""Faithfulness metrics: each claim of the paper as a number (definitions: docs/metrics.md).

Every metric declares its name, what it measures and whether higher is better (``None`` for a
descriptive number), carries one headline ``value`` and a ``details`` dict with the curves and
per-cell numbers. :func:`evaluate` computes them all from a run and the generator that made it,
together with the images the paper's figures show (:class:`Evaluation`), so that
:mod:`regprim.figures` only draws arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from regprim.generator import SplitGenerator
from regprim.reconstruction import reconstruct_features, selection
from regprim.run import Run
from regprim.salient import energy_fraction

RATIOS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
FIG3_RATIOS = [0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]


@dataclass
class Metric:
    name: str
    description: str
    higher_is_better: bool | None
    value: float
    details: dict[str, Any] = field(default_factory=dict)


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


def metrics_json(metrics: list[Metric]) -> dict[str, Any]:
    return {"metrics": [asdict(m) for m in metrics]}


class Scorer:
    """Renders features of one run and scores the images on its player cells."""

    def __init__(self, run: Run, gen: SplitGenerator, batch: int = 64) -> None:
        self.run, self.gen, self.batch = run, gen, batch
        device = gen.device
        self.f, self.f0 = run.f.to(device), run.f0.to(device)
        self.x = run.image.to(device)
        self.code = run.code.to(device)
        self.components = run.components.to(device)
        self.n = run.n
        self.cell_masks = run.grid.cell_masks()[run.players].to(device)  # (n, H, W)
        self.order = torch.tensor(run.ranked, dtype=torch.long)
        self.norms = run.norms.to(device)
        self.base_err = self.cell_errors(run.baseline_image[None].to(device))[0]  # (n,)

    def render(self, features: Tensor) -> Tensor:
        return self.gen.render(features, self.code, self.batch)

    def cell_errors(self, images: Tensor) -> Tensor:
        """Squared error against the target on every player cell: ``(B, n)``."""
        sq = ((images - self.x) ** 2).sum(1).flatten(1)
        return sq @ self.cell_masks.flatten(1).to(sq.dtype).T

    def set_rel_error(self, images: Tensor, target: int) -> Tensor:
        """Error on the cells of bitmask ``target`` relative to the baseline image's: ``(B,)``."""
        bits = torch.tensor([target >> i & 1 for i in range(self.n)], device=self.x.device).bool()
        errs = self.cell_errors(images)[:, bits].sum(1)
        return errs / self.base_err[bits].sum().clamp_min(1e-30)

    def ratio_images(
        self, target: int, ratios: list[float], meeting: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2 for ``target`` with the largest fraction p of the (non-)covering
        components, for each p in ``ratios``: images ``(len(ratios), C, H, W)`` and the
        selection ``(len(ratios), m)`` over :attr:`order`."""
        targets = torch.tensor([target])
        chosen = torch.cat([selection(self.order, targets, p, meeting) for p in ratios])
        comps = self.components[self.order.to(self.components.device)]
        return self.render(reconstruct_features(comps, self.f0, chosen)), chosen

    def curves(
        self, targets: list[int], meeting: bool, rebuilt: bool = False
    ) -> tuple[dict, Tensor]:
        """For each target bitmask, the relative error on its cells (``1 -`` it when
        ``rebuilt``) as the ratio p of (non-)covering components grows; and the first target's
        images."""
        curves, first = [], None
        for target in targets:
            images, _ = self.ratio_images(target, RATIOS, meeting)
            first = images if first is None else first
            rel = self.set_rel_error(images, target)
            curves.append((1 - rel if rebuilt else rel).tolist())
        final = [c[-1] for c in curves]
        mean_curve = [sum(c[j] for c in curves) / len(curves) for j in range(len(RATIOS))]
        details = {
            "ratios": RATIOS,
            "targets": targets,
            "curves": curves,
            "final": final,
            "mean_curve": mean_curve,
            "mean": sum(final) / len(final),
        }
        return details, first


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


def leakage(
    s: Scorer, salient: list[int], top: int = 24, contexts: int = 8, seed: int = 0
) -> Metric:
    full = 2**s.n - 1
    chosen = [k for k in salient if k != full and s.norms[k] > 0][:top]
    rng = torch.Generator().manual_seed(seed)
    others = s.components[s.order.to(s.components.device)]
    pixels = s.cell_masks.flatten(1).sum(1).to(s.x.dtype)
    ratios: list[list[float]] = []
    for k in chosen:
        include = torch.rand(contexts, len(s.order), generator=rng) < 0.5
        include[:, s.order == k] = False
        context = reconstruct_features(others, s.f0, include)  # F(Omega), Omega without k
        before = s.render(context)
        after = s.render(context + s.components[k])
        change = ((after - before) ** 2).sum(1).flatten(1)  # (R, H*W)
        inside = torch.tensor([k >> i & 1 for i in range(s.n)], device=s.x.device).bool()
        per_cell = change @ s.cell_masks.flatten(1).to(change.dtype).T  # (R, n)
        out_mean = per_cell[:, ~inside].sum(1) / pixels[~inside].sum()
        in_mean = per_cell[:, inside].sum(1) / pixels[inside].sum()
        ratios.append((out_mean / in_mean.clamp_min(1e-30)).tolist())
    flat = sorted(r for rs in ratios for r in rs)
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
        },
    )


def sparsity(s: Scorer, salient: list[int]) -> Metric:
    count = 2**s.n - 1
    mags = s.components[1:].abs().flatten().sort(descending=True).values
    points = torch.linspace(0, len(mags) - 1, 400).long()
    return Metric(
        "sparsity",
        "Fig. 5: fraction of the components that carry 90% of the total squared norm "
        "(smaller = sparser); also the fraction above the salient threshold",
        False,
        energy_fraction(s.components),
        {
            "fraction_salient": len(salient) / count,
            "components": count,
            "sorted_magnitudes": {
                "rank_fraction": (points.float() / len(mags)).tolist(),
                "magnitude": mags[points.to(mags.device)].tolist(),
            },
            "norms_sorted": s.norms[s.order.to(s.norms.device)].tolist(),
        },
    )


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


def region_weights(components: Tensor, ks: list[int], n: int) -> list[float]:
    """Appendix H: per player cell, the sum of ``||Delta f_k||_1 / |S_k|`` over ``ks``."""
    l1 = components.flatten(1).abs().sum(1)
    weights = [0.0] * n
    for k in ks:
        for i in range(n):
            if k >> i & 1:
                weights[i] += float(l1[k]) / k.bit_count()
    return weights


def action_regions(s: Scorer, salient: list[int]) -> Metric:
    weights = torch.tensor(region_weights(s.components, salient, s.n))
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
    u, rel = run.minimal_features, run.rel_error
    size = (u - run.f0).abs().flatten(1).sum(1)
    levels = torch.tensor([s.bit_count() for s in range(2**run.n)])
    by_size = {str(k): float(size[levels == k].mean()) for k in range(run.n + 1)}
    err_by_size = {str(k): float(rel[levels == k].max()) for k in range(1, run.n + 1)}
    return Metric(
        "minimal_feature_quality",
        "Eq. 8: worst relative masked reconstruction error of u(S) on the cells of S "
        "(details: L1 size of u(S) - f0 and worst error by |S|)",
        False,
        float(rel.max()),
        {"l1_by_size": by_size, "max_rel_error_by_size": err_by_size},
    )


def incremental(s: Scorer, target: int) -> tuple[dict[str, Any], Tensor]:
    """Fig. 3: the target cells reconstructed as covering components are added (largest
    first), with the action-region weights of the added components."""
    images, chosen = s.ratio_images(target, FIG3_RATIOS)
    covering = [int(k) for k in s.order if int(k) & target]
    counts = chosen.sum(1).tolist()
    data = {
        "target": target,
        "ratios": FIG3_RATIOS,
        "counts": counts,
        "covering": len(covering),
        "rel_errors": s.set_rel_error(images, target).tolist(),
        "weights": [region_weights(s.components, covering[:c], s.n) for c in counts],
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
        beta,
        irrelevant,
        leakage(s, salient),
        sparsity(s, salient),
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
