"""The scoring that every faithfulness metric shares (:mod:`regprim.analysis.metrics`): a
:class:`Metric`, and a :class:`Scorer` that renders features of one run and scores the images
on its player cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from regprim.core.reconstruction import reconstruct_features, selection
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator

RATIOS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclass
class Metric:
    name: str
    description: str
    higher_is_better: bool | None
    value: float
    details: dict[str, Any] = field(default_factory=dict)


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
        self.n = run.n
        self.cell_masks = run.grid.cell_masks()[run.players].to(device)  # (n, H, W)
        self.order = torch.tensor(run.ranked, dtype=torch.long)  # non-zero, by norm
        self.ordered = run.component(self.order).to(device)  # their values, in that order
        self.position = {int(k): j for j, k in enumerate(self.order)}
        self.base_err = self.cell_errors(run.baseline_image[None].to(device))[0]  # (n,)

    def render(self, features: Tensor) -> Tensor:
        return self.gen.render(features, self.code, self.batch)

    def cell_errors(self, images: Tensor) -> Tensor:
        """Squared error against the target on every player cell: ``(B, n)``."""
        sq = ((images - self.x) ** 2).sum(1).flatten(1)
        return sq @ self.cell_masks.flatten(1).to(sq.dtype).T

    def bits(self, target: int) -> Tensor:
        """The players of bitmask ``target`` as a bool ``(n,)``."""
        return torch.tensor([target >> i & 1 for i in range(self.n)], device=self.x.device).bool()

    def set_rel_error(self, images: Tensor, target: int) -> Tensor:
        """Error on the cells of bitmask ``target`` relative to the baseline image's: ``(B,)``."""
        bits = self.bits(target)
        errs = self.cell_errors(images)[:, bits].sum(1)
        return errs / self.base_err[bits].sum().clamp_min(1e-30)

    def ratio_images(
        self, target: int, ratios: list[float], meeting: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2 for ``target`` with the largest fraction p of the (non-)meeting
        components, for each p in ``ratios``: images ``(len(ratios), C, H, W)`` and the
        selection ``(len(ratios), m)`` over :attr:`order`."""
        targets = torch.tensor([target])
        chosen = torch.cat([selection(self.order, targets, p, meeting) for p in ratios])
        return self.render(reconstruct_features(self.ordered, self.f0, chosen)), chosen

    def curves(
        self, targets: list[int], meeting: bool, rebuilt: bool = False
    ) -> tuple[dict, Tensor]:
        """For each target bitmask, the relative error on its cells (``1 -`` it when
        ``rebuilt``) as the ratio p of (non-)meeting components grows; and the first target's
        images."""
        # a target whose cells the baseline image already matches has nothing to rebuild
        base = torch.stack([self.base_err[self.bits(t)].sum() for t in targets])
        skipped = [t for t, b in zip(targets, base, strict=True) if b <= 1e-9 * self.base_err.max()]
        targets = [t for t in targets if t not in skipped] or targets
        curves, added, first = [], [], None
        for target in targets:
            images, chosen = self.ratio_images(target, RATIOS, meeting)
            first = images if first is None else first
            rel = self.set_rel_error(images, target)
            curves.append((1 - rel if rebuilt else rel).tolist())
            added.append((chosen.sum(1) > 0).tolist())
        final = [c[-1] for c in curves]
        mean_curve = [sum(c[j] for c in curves) / len(curves) for j in range(len(RATIOS))]
        # worst over the points where components were added: before any, the image is the
        # baseline's (relative error 1 by definition, 0 for Fig. 6), which says nothing
        pairs = (zip(c, a, strict=True) for c, a in zip(curves, added, strict=True))
        points = [v for pair in pairs for v, on in pair if on]
        worst = max((abs(v) if rebuilt else v) for v in points or [c[-1] for c in curves])
        details = {
            "ratios": RATIOS,
            "targets": targets,
            "curves": curves,
            "final": final,
            "mean_curve": mean_curve,
            "mean": sum(final) / len(final),
            "worst": worst,  # over targets and ratios that add components (|value|: Fig. 6)
            "skipped": skipped,  # targets equal to the baseline image on their cells
            "auc": sum(
                (mean_curve[j] + mean_curve[j + 1]) / 2 * (RATIOS[j + 1] - RATIOS[j])
                for j in range(len(RATIOS) - 1)
            ),
        }
        return details, first
