"""Faithfulness metrics: each claim of the paper as a number (definitions: docs/metrics.md).

Every metric declares its name, what it measures and whether higher is better (``None`` for a
descriptive number), carries one headline ``value`` and a ``details`` dict with the curves and
per-cell numbers that the figures and the report draw. :func:`verify` computes them all from a
run and the generator that made it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from regprim.generator import SplitGenerator
from regprim.regions import Grid
from regprim.salient import energy_fraction

RATIOS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclass
class Metric:
    name: str
    description: str
    higher_is_better: bool | None
    value: float
    details: dict[str, Any] = field(default_factory=dict)


class Verifier:
    """Renders features and scores images of one run on its player cells."""

    def __init__(self, run, gen: SplitGenerator, batch: int = 64) -> None:
        self.run, self.gen, self.batch = run, gen, batch
        t = run.tensors
        self.device = gen.device
        self.f, self.f0 = t["f"].to(self.device), t["f0"].to(self.device)
        self.x = t["image"].to(self.device)
        self.baseline_image = t["baseline_image"].to(self.device)
        self.code = t["code"][None].to(self.device)
        self.components = run.components.to(self.device)
        self.n = run.n
        rows, cols = run.summary["grid"]
        self.grid = Grid(rows, cols, *self.x.shape[1:])
        self.cell_masks = self.grid.cell_masks()[run.players].to(self.device)  # (n, H, W)
        self.norms = self.components.flatten(1).norm(dim=1)
        self.order = [
            int(k)
            for k in torch.argsort(self.norms, descending=True, stable=True)
            if k != 0 and self.norms[k] > 0
        ]
        self.base_err = self.cell_errors(self.baseline_image[None])[0]  # (n,)

    @torch.no_grad()
    def render(self, features: Tensor) -> Tensor:
        out = [
            self.gen.g(features[i : i + self.batch], self.code)
            for i in range(0, len(features), self.batch)
        ]
        return torch.cat(out) if out else features.new_zeros(0, *self.x.shape)

    def cell_errors(self, images: Tensor) -> Tensor:
        """Squared error against the target on every player cell: ``(B, n)``."""
        sq = ((images - self.x) ** 2).sum(1).flatten(1)
        return sq @ self.cell_masks.flatten(1).to(sq.dtype).T

    def set_rel_error(self, images: Tensor, target: int) -> Tensor:
        """Error on the cells of bitmask ``target`` relative to the baseline image's: ``(B,)``."""
        bits = torch.tensor([target >> i & 1 for i in range(self.n)], device=self.device).bool()
        errs = self.cell_errors(images)[:, bits].sum(1)
        return errs / self.base_err[bits].sum().clamp_min(1e-30)

    def ratio_features(self, ks: list[int]) -> Tensor:
        """``f0 + the first ceil(p * len(ks)) of ks`` for each p in RATIOS: ``(11, *f)``."""
        counts = [math.ceil(p * len(ks)) for p in RATIOS]
        if not ks:
            return self.f0.expand(len(RATIOS), *self.f0.shape).clone()
        cums = torch.cumsum(self.components[ks], dim=0)
        zero = torch.zeros_like(self.f0)[None]
        cums = torch.cat([zero, cums])
        return self.f0 + cums[counts]

    def covering(self, target: int) -> list[int]:
        return [k for k in self.order if k & target]

    def not_covering(self, target: int) -> list[int]:
        return [k for k in self.order if not k & target]

    def all(self) -> list[Metric]:
        """Every metric, in the order of docs/metrics.md."""
        salient = [int(k) for k in self.run.summary["salient"]]
        return [
            self.requirement_2_alpha(),
            self.requirement_2_beta(),
            self.irrelevant_components(),
            self.leakage(salient),
            self.sparsity(salient),
            self.code_influence(),
            self.action_regions(salient),
            self.minimal_feature_quality(),
        ]

    # -- the metrics ------------------------------------------------------------------------
    def curves(self, targets: list[int], candidates, reconstructed: bool = False) -> dict:
        """For each target bitmask, the relative error on its cells (or ``1 -`` it, when
        ``reconstructed``) as the ratio p of ``candidates(target)`` grows."""
        curves = []
        for target in targets:
            rel = self.set_rel_error(self.render(self.ratio_features(candidates(target))), target)
            curves.append((1 - rel if reconstructed else rel).tolist())
        final = [c[-1] for c in curves]
        return {
            "ratios": RATIOS,
            "targets": targets,
            "curves": curves,
            "final": final,
            "mean_curve": _mean_curve(curves),
            "mean": sum(final) / len(final),
        }

    def requirement_2_alpha(self) -> Metric:
        d = self.curves([1 << i for i in range(self.n)], self.covering)
        return Metric(
            "requirement_2_alpha",
            "Eq. 6 / Fig. 7a: error of g(f0 + components covering cell i) on cell i, relative to "
            "the baseline image's error there (mean over player cells; 0 = exact)",
            False,
            d.pop("mean"),
            d,
        )

    def requirement_2_beta(self, sets: int = 16, seed: int = 0) -> Metric:
        rng = torch.Generator().manual_seed(seed)
        targets = sorted({int(t) for t in torch.randint(1, 2**self.n, (sets,), generator=rng)})
        d = self.curves(targets, self.covering)
        return Metric(
            "requirement_2_beta",
            "Eq. 7 / Fig. 7b: error of g(f0 + components meeting S) on the cells of S for random "
            "sets S, relative to the baseline image's error (mean; 0 = exact)",
            False,
            d.pop("mean"),
            d,
        )

    def irrelevant_components(self) -> Metric:
        d = self.curves([1 << i for i in range(self.n)], self.not_covering, reconstructed=True)
        return Metric(
            "irrelevant_components",
            "Fig. 6: how much of cell i the components NOT covering it reconstruct, "
            "1 - error / baseline error (mean over cells, all of them added; should stay near 0)",
            False,
            d.pop("mean"),
            d,
        )

    def leakage(
        self, salient: list[int], top: int = 24, contexts: int = 8, seed: int = 0
    ) -> Metric:
        full = 2**self.n - 1
        chosen = [k for k in salient if k != full and self.norms[k] > 0][:top]
        rng = torch.Generator().manual_seed(seed)
        ratios: list[list[float]] = []
        for k in chosen:
            include = torch.rand(contexts, len(self.order), generator=rng) < 0.5
            others = torch.tensor(self.order, device=self.device)
            include[:, others.cpu() == k] = False
            weights = include.to(self.components.dtype).to(self.device)
            ctx = self.f0 + torch.einsum("rm,m...->r...", weights, self.components[others])
            before = self.render(ctx)
            after = self.render(ctx + self.components[k])
            change = ((after - before) ** 2).sum(1).flatten(1)  # (R, H*W)
            inside = torch.tensor([k >> i & 1 for i in range(self.n)], device=self.device).bool()
            per_cell = change @ self.cell_masks.flatten(1).to(change.dtype).T  # (R, n)
            pixels = self.cell_masks.flatten(1).sum(1).to(change.dtype)
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

    def sparsity(self, salient: list[int]) -> Metric:
        count = 2**self.n - 1
        mags = self.components[1:].abs().flatten().sort(descending=True).values
        points = torch.linspace(0, len(mags) - 1, 400).long()
        return Metric(
            "sparsity",
            "Fig. 5: fraction of the components that carry 90% of the total squared norm "
            "(smaller = sparser); also the fraction above the salient threshold",
            False,
            energy_fraction(self.components),
            {
                "fraction_salient": len(salient) / count,
                "components": count,
                "sorted_magnitudes": {
                    "rank_fraction": (points.float() / len(mags)).tolist(),
                    "magnitude": mags[points.to(mags.device)].tolist(),
                },
                "norms_sorted": self.norms[self.order].tolist(),
            },
        )

    def code_influence(self, codes: int = 8, seed: int = 1) -> Metric:
        class_index = self.run.summary.get("class_index")
        others = self.gen.sample_codes(codes, 10_000 + seed, class_index)
        with torch.no_grad():
            images = torch.cat([self.gen.g(self.f[None], c[None]) for c in others])
        change = self.cell_errors(images).sum(1)  # squared change from x on the player cells
        base = self.base_err.sum().clamp_min(1e-30)
        note = "" if self.gen.sees_code else "g does not see the code: zero by construction"
        return Metric(
            "code_influence",
            "Fig. 8 / Appendix F: squared change on the player cells when the same feature f is "
            "rendered with other codes, relative to the target-vs-baseline error there",
            False,
            float((change / base).mean()),
            {"per_code": (change / base).tolist(), "sees_code": self.gen.sees_code, "note": note},
        )

    def action_regions(self, salient: list[int]) -> Metric:
        weights = torch.zeros(self.n, device=self.device)
        l1 = self.components.flatten(1).abs().sum(1)
        for k in salient:
            for i in range(self.n):
                if k >> i & 1:
                    weights[i] += l1[k] / k.bit_count()
        share = weights / weights.sum().clamp_min(1e-30)
        return Metric(
            "action_region_distribution",
            "Appendix H: per player cell, the sum over salient components covering it of "
            "L1 norm / |S_k|; the value is the largest cell's share",
            None,
            float(share.max()) if len(share) else 0.0,
            {"per_cell": weights.tolist(), "share": share.tolist(), "players": self.run.players},
        )

    def minimal_feature_quality(self) -> Metric:
        u = self.run.minimal_features
        rel = self.run.tensors["rel_error_denoised" if self.run.denoised else "rel_error"]
        size = (u - self.run.f0).abs().flatten(1).sum(1)
        levels = torch.tensor([s.bit_count() for s in range(2**self.n)])
        by_size = {str(k): float(size[levels == k].mean()) for k in range(self.n + 1)}
        err_by_size = {str(k): float(rel[levels == k].max()) for k in range(1, self.n + 1)}
        return Metric(
            "minimal_feature_quality",
            "Eq. 8: worst relative masked reconstruction error of u(S) on the cells of S "
            "(details: L1 size of u(S) - f0 and worst error by |S|)",
            False,
            float(rel.max()),
            {"l1_by_size": by_size, "max_rel_error_by_size": err_by_size},
        )


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [sum(c[j] for c in curves) / len(curves) for j in range(len(curves[0]))]


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def _median(values: list[float]) -> float:
    return _quantile(values, 0.5)


def verify(run, gen: SplitGenerator) -> list[Metric]:
    """All metrics of a run (see :class:`Verifier`)."""
    return Verifier(run, gen).all()


def metrics_json(metrics: list[Metric]) -> dict[str, Any]:
    return {"metrics": [asdict(m) for m in metrics]}
