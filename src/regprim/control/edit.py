"""Edits: act on a run's regional primitives (drop, keep, scale, transplant) and measure them.

An :class:`Edit` is data: a recipient run and a list of :class:`Operation`. Each operation picks
components of the run's :class:`~regprim.core.components.ComponentTable` by action set (bitmasks) or
by the cells they meet, and sets their weights ``w_k``; a transplant replaces the recipient's
components that meet a set of cells by the donor run's components that meet them. The edited
feature is::

    f_edit = f + sum_k (w_k - 1) Delta f_k + sum_{k in donor} Delta f^donor_k

that is ``f0 + sum_k w_k Delta f_k`` plus the part ``f - u(N)`` that no player's pixels need
(kept, so that an edit with every weight 1 gives back the target exactly). The image is
``g(f_edit)`` with the recipient's code. Every edit is measured the same way as two naive edits
of the same cells (docs/metrics.md, "Edits"): feature masking (``f0``, or the donor's feature,
at the feature positions under the cells) and, for transplants, pasting the donor's pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from regprim.core.regions import Grid
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator

KINDS = ("drop", "keep", "scale", "transplant")
MAX_FACTOR = 10.0  # |weight| of a component after scaling; edit.json holds only finite numbers


@dataclass(frozen=True)
class Operation:
    """One step of an edit.

    Args:
        kind: ``drop`` (weight 0), ``keep`` (every other component gets weight 0), ``scale``
            (weight times ``factor``) or ``transplant`` (the donor's components replace the
            recipient's).
        masks: the components chosen by action set (bitmasks over the run's players).
        cells: or the components whose action set meets these grid cells (player cells).
        factor: the weight multiplier of ``scale``.
        donor: index of the donor run in the edit's ``donors`` (``transplant`` only).
    """

    kind: str
    masks: tuple[int, ...] = ()
    cells: tuple[int, ...] = ()
    factor: float = 1.0
    donor: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"edit operation {self.kind!r} is not one of {list(KINDS)}"
            raise ValueError(msg)
        if not math.isfinite(self.factor) or abs(self.factor) > MAX_FACTOR:
            msg = (
                f"{self.kind}: factor {self.factor} must be a finite number within "
                f"[-{MAX_FACTOR}, {MAX_FACTOR}] (0 drops a component, 1 keeps it)"
            )
            raise ValueError(msg)
        if bool(self.masks) == bool(self.cells):
            msg = f"{self.kind}: choose components by masks or by cells (exactly one of them)"
            raise ValueError(msg)
        if self.kind == "transplant" and (self.donor is None or not self.cells):
            msg = "transplant needs a donor run and the cells to take from it (cells=...)"
            raise ValueError(msg)


def same_source(recipient: Run, donor: Run) -> None:
    """Refuse a donor explained with another model, layer, baseline, grid or player set,
    naming what differs."""
    checks = {
        "model": (recipient.model, donor.model),
        "layer": (recipient.layer, donor.layer),
        "grid": (recipient.summary["grid"], donor.summary["grid"]),
        "players": (recipient.players, donor.players),
        "feature shape": (tuple(recipient.f.shape), tuple(donor.f.shape)),
    }
    differ = [f"{k} {a} vs {b}" for k, (a, b) in checks.items() if a != b]
    if not differ and not torch.equal(recipient.f0, donor.f0):
        differ.append(
            f"baseline f0 (max difference {float((recipient.f0 - donor.f0).abs().max()):.3g})"
        )
    if differ:
        msg = (
            "the donor run cannot give components to this run: "
            + "; ".join(differ)
            + "; explain the donor with the recipient's model, layer, grid, players and baseline"
        )
        raise ValueError(msg)


@dataclass
class Edit:
    """A recipient run, its donors and the operations, in order (see the module docstring)."""

    run: Run
    operations: list[Operation] = field(default_factory=list)
    donors: list[Run] = field(default_factory=list)

    # -- building --------------------------------------------------------------------------------
    def drop(self, masks=(), cells=()) -> Edit:
        return self._add(Operation("drop", tuple(masks), tuple(cells)))

    def keep(self, masks=(), cells=()) -> Edit:
        return self._add(Operation("keep", tuple(masks), tuple(cells)))

    def scale(self, factor: float, masks=(), cells=()) -> Edit:
        return self._add(Operation("scale", tuple(masks), tuple(cells), float(factor)))

    def transplant(self, donor: Run, cells) -> Edit:
        same_source(self.run, donor)
        self.donors.append(donor)
        return self._add(Operation("transplant", cells=tuple(cells), donor=len(self.donors) - 1))

    def _add(self, op: Operation) -> Edit:
        picked = self.chosen(op, self.run)  # check the choice now, not at render time
        if op.kind in ("drop", "keep"):
            other = "keep" if op.kind == "drop" else "drop"
            clash = [
                m for o in self.operations if o.kind == other for m in self.chosen(o, self.run)
            ]
            both = sorted(set(clash) & set(picked))
            if both:
                msg = (
                    f"{op.kind} and {other} both choose the components {both[:5]}; an edit "
                    "that drops and keeps the same primitive removes everything: choose one"
                )
                raise ValueError(msg)
        self.operations.append(op)
        return self

    def __repr__(self) -> str:
        def one(o: Operation) -> str:
            chosen = f"cells={list(o.cells)}" if o.cells else f"masks={list(o.masks)}"
            return f"{o.kind}({chosen}" + (f", x{o.factor:g})" if o.kind == "scale" else ")")

        ops = ", ".join(one(o) for o in self.operations)
        return f"Edit({self.run.model}/{self.run.layer}, n={self.run.n}: {ops or 'no operation'})"

    # -- what it does ----------------------------------------------------------------------------
    @staticmethod
    def chosen(op: Operation, run: Run) -> list[int]:
        """The action sets of ``run`` that ``op`` picks (non-zero components)."""
        if op.cells:
            return run.table.meeting(run.bitmask(list(op.cells)))
        held = set(run.table.ranked)
        missing = [m for m in op.masks if m not in held]
        if missing:
            msg = (
                f"no non-zero component with action set {missing[0]} (cells "
                f"{run.cells(missing[0]) if 0 < missing[0] < 2**run.n else '?'}); "
                f"the run's largest are {run.table.top_k(5)}"
            )
            raise ValueError(msg)
        return list(op.masks)

    def weights(self) -> dict[int, float]:
        """The recipient's weight per action set (1 where no operation changed it)."""
        w = {m: 1.0 for m in self.run.table.ranked}
        for op in self.operations:
            picked = set(self.chosen(op, self.run))
            for m in w:
                if op.kind == "keep":
                    w[m] = w[m] if m in picked else 0.0
                elif m in picked:  # drop and transplant remove it, scale multiplies it
                    w[m] = w[m] * op.factor if op.kind == "scale" else 0.0
        return w

    def cells(self) -> list[int]:
        """The grid cells the edit acts on: the cells named, else the cells of the chosen
        components' action sets."""
        out: set[int] = set()
        for op in self.operations:
            if op.cells:
                out.update(op.cells)
            else:
                for m in self.chosen(op, self.run):
                    out.update(self.run.cells(m))
        return sorted(out)

    def region(self) -> list[int]:
        """The grid cells in the action regions of every component the edit changes (the
        recipient's with a weight other than 1, the donor's it brings): where exclusive
        primitives would change the image, a superset of :meth:`cells`."""
        out: set[int] = set(self.cells())
        for m, w in self.weights().items():
            if w != 1:
                out.update(self.run.cells(m))
        for donor, given in self.given():
            for m in given:
                out.update(donor.cells(m))
        return sorted(out)

    def given(self) -> list[tuple[Run, list[int]]]:
        """Per transplant, the donor and the action sets of its components that it brings."""
        return [
            (self.donors[op.donor], self.chosen(op, self.donors[op.donor]))
            for op in self.operations
            if op.kind == "transplant"
        ]

    def feature(self) -> Tensor:
        """``f_edit`` ``(*feature_shape)``."""
        table = self.run.table
        changed = {m: w - 1 for m, w in self.weights().items() if w != 1}
        f = self.run.f.clone()
        if changed:
            masks = list(changed)
            coef = torch.tensor([changed[m] for m in masks], dtype=f.dtype)
            f += (coef @ table.value(masks).flatten(1)).view_as(f)
        for donor, given in self.given():
            f += donor.table.value(given).sum(0)
        return f

    def describe(self) -> list[dict[str, Any]]:
        """The operations as JSON-ready records (donors by their folder)."""
        out = []
        for op in self.operations:
            rec = asdict(op) | {"masks": list(op.masks), "cells": list(op.cells)}
            if op.donor is not None:
                donor = self.donors[op.donor]
                rec["donor"] = str(donor.path) if donor.path else f"donor {op.donor}"
            out.append(rec)
        return out


# -- measuring ------------------------------------------------------------------------------------
def cell_change(before: Tensor, after: Tensor, grid: Grid) -> Tensor:
    """Mean absolute change per pixel in each grid cell ``(rows, cols)`` of two images."""
    diff = (after - before).abs().sum(0)
    masks = grid.cell_masks().to(diff.device)
    per = (diff[None] * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    return per.view(grid.rows, grid.cols).cpu()


def locality(before: Tensor, after: Tensor, grid: Grid, cells: list[int]) -> float:
    """Summed absolute change outside ``cells`` over the summed change inside them (0 = the
    edit changes only its cells; the 27 non-player cells of an n = 9 run count as outside)."""
    diff = (after - before).abs().sum(0)
    inside = grid.cell_masks()[cells].any(0).to(diff.device)
    return float(diff[~inside].sum() / diff[inside].sum().clamp_min(1e-30))


def agreement(
    edited: Tensor, donor: Tensor, recipient: Tensor, grid: Grid, cells: list[int]
) -> float:
    """For a transplant: squared distance of the edited image to the donor's image on ``cells``
    over that of the unedited recipient's (0 = the donor's pixels exactly, 1 = no closer)."""
    inside = grid.cell_masks()[cells].any(0).to(edited.device)
    d_edit = ((edited - donor) ** 2).sum(0)[inside].sum()
    d_before = ((recipient - donor) ** 2).sum(0)[inside].sum()
    return float(d_edit / d_before.clamp_min(1e-30))


def positions_under(feature_shape: tuple[int, ...], grid: Grid, cells: list[int]) -> Tensor:
    """Bool ``feature_shape``: the feature positions under ``cells`` of a spatial ``(C, h, w)``
    feature (each cell's box scaled to the feature's grid), for naive feature masking."""
    if len(feature_shape) != 3:
        msg = f"naive feature masking needs a spatial (C, h, w) feature, not {feature_shape}"
        raise ValueError(msg)
    _, h, w = feature_shape
    small = Grid(grid.rows, grid.cols, h, w) if grid.rows <= h and grid.cols <= w else None
    if small is None:
        msg = f"the {grid.rows}x{grid.cols} grid is finer than the {h}x{w} feature"
        raise ValueError(msg)
    spatial = small.cell_masks()[cells].any(0)
    return spatial[None].expand(feature_shape)


@dataclass
class EditResult:
    """An applied edit: the features and images and the metrics (docs/metrics.md, "Edits").
    ``images`` and ``features`` hold every way of editing the same cells (``primitives``,
    ``feature masking``, ``pixel pasting``: an image only), ``baselines`` the naive ways'
    metrics."""

    before: Tensor
    cells: list[int]
    region: list[int]
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    images: dict[str, Tensor]
    features: dict[str, Tensor]

    @property
    def feature(self) -> Tensor:
        """``f_edit``, the primitive edit's feature."""
        return self.features["primitives"]

    @property
    def image(self) -> Tensor:
        """``g(f_edit)``."""
        return self.images["primitives"]


@torch.no_grad()
def apply(edit: Edit, gen: SplitGenerator) -> EditResult:
    """Render ``edit`` and the naive edits of the same cells, and measure each the same way."""
    run = edit.run
    cells, region = edit.cells(), edit.region()
    code = run.code.to(gen.device)
    # the naive ways and the agreement compare with the first transplant's donor
    donor = next((d for d, _ in edit.given()), None)
    candidates = {"primitives": edit.feature()}
    try:  # naive feature masking: f0 (or the donor's feature) under the cells
        under = positions_under(tuple(run.f.shape), run.grid, cells)
        source = donor.f if donor is not None else run.f0
        candidates["feature masking"] = torch.where(under, source, run.f)
    except ValueError:
        pass
    images = dict(
        zip(candidates, gen.render(torch.stack(list(candidates.values())), code).cpu(), strict=True)
    )
    before = run.image
    if donor is not None:  # pixel pasting: the donor's pixels in the cells
        inside = run.grid.cell_masks()[cells].any(0)
        images["pixel pasting"] = torch.where(inside, donor.image, before)
    measured = {}
    for name, image in images.items():
        m = {
            "locality": locality(before, image, run.grid, cells),
            "locality_region": locality(before, image, run.grid, region),
            "cell_change": cell_change(before, image, run.grid).tolist(),
        }
        if donor is not None:
            m["agreement"] = agreement(image, donor.image, before, run.grid, cells)
        measured[name] = m
    return EditResult(
        before=before,
        cells=cells,
        region=region,
        metrics=measured["primitives"],
        baselines={k: v for k, v in measured.items() if k != "primitives"},
        images=images,
        features=candidates,
    )


def save_edit(
    edit: Edit, result: EditResult, out: Path, overwrite: bool = False, inversion=None
) -> Path:
    """Write an edit folder (docs/run-folder.md, "Edit folders"): ``edit.json`` (the recipient,
    operations, cells, metrics, the naive baselines' metrics, the inversion's numbers),
    ``tensors.safetensors`` (``f_edit``, the images, ``z*``), ``edit.png`` and the manifest;
    atomically, under the folder's lock."""
    from regprim.present.figures import edit_figure, png
    from regprim.storage import folders
    from regprim.storage import run_folder as rf

    run = edit.run
    record: dict[str, Any] = {
        "recipient": str(run.path) if run.path else None,
        "model": run.model,
        "layer": run.layer,
        "players": run.players,
        "operations": edit.describe(),
        "cells": result.cells,
        "formula": "f_edit = f + sum_k (w_k - 1) Delta f_k + donor components",
        "metrics": result.metrics,
        "baselines": result.baselines,
    }
    tensors = {"f_edit": result.feature, "before": result.before}
    tensors |= {f"image_{k.replace(' ', '_')}": v.clone() for k, v in result.images.items()}
    if inversion is not None:
        record["inversion"] = {
            "residual": inversion.residual,
            "image_agreement": inversion.image_agreement,
            "steps": inversion.steps,
            "converged": inversion.converged,
            "residuals": inversion.residuals,
        }
        tensors |= {"code": inversion.code[0], "inverted_image": inversion.image}
    shown = dict(result.images)
    if inversion is not None:
        shown["g(d(z*))"] = inversion.image
    fig, _ = edit_figure(result.before, shown, run.value_range, run.grid, run.players, result.cells)
    files = {
        rf.EDIT: json.dumps(record, indent=2, allow_nan=False),  # strict JSON, always
        rf.TENSORS: rf.safetensors_content(tensors),
        rf.EDIT_FIGURE: png(fig),
    }
    out = Path(out).resolve()
    folders.check_output(out, overwrite, rf.EDIT)
    with folders.lock(out):
        return folders.write_folder(out, files, overwrite, rf.EDIT)
