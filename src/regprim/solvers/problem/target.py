"""The target of a run: one generated image, its feature, the baseline and the players.

:func:`build_target` is the pipeline's second stage (after loading the model): it draws the
target's code, computes ``f = d(z)`` and ``x = g(f)``, checks the grid and the players against
the image, computes the baseline ``f0`` and its image, and chooses the players. Everything later
(solvers, metrics, figures, report) takes the :class:`Target`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from regprim.config import ExplainConfig
from regprim.core.regions import Grid, choose_players
from regprim.generators.base import SplitGenerator
from regprim.solvers.problem.baseline import baseline
from regprim.solvers.problem.memory import batch_that_fits, peak
from regprim.solvers.problem.photo import fit_code, load_photo


@dataclass
class Target:
    """One image to explain and what is fixed before its minimal features are solved.

    Attributes:
        gen: the split generator (on the run's device).
        code: the target's code ``(1, code_dim)``; ``g`` renders with it.
        f: feature of the target at the cut layer ``(*feature_shape)``.
        f0: baseline feature ``E_z[d(z)]`` ``(*feature_shape)``.
        x: target image ``g(f)`` ``(C, H, W)``.
        baseline_image: ``g(f0)`` ``(C, H, W)``.
        grid: the grid of cells over the image.
        players: player cells (grid ids) in bit order.
        class_index: the target's class (None for unconditional models).
        split_check: the generator's check that its split reproduces the model's own output
            (:meth:`SplitGenerator.check_split`; {} where it has none).
        photo: the photo a run with ``image`` explains the nearest generated image of
            ``(C, H, W)`` (None: a generated image, from the seed).
        fit: how the code was fitted to the photo (:func:`regprim.solvers.problem.photo.fit_code`).
    """

    gen: SplitGenerator
    code: Tensor
    f: Tensor
    f0: Tensor
    x: Tensor
    baseline_image: Tensor
    grid: Grid
    players: list[int]
    class_index: int | None = None
    split_check: dict = field(default_factory=dict)
    photo: Tensor | None = None
    fit: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.players)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.f.shape)

    @cached_property
    def player_masks(self) -> Tensor:
        """Pixel masks of the players ``(n, H, W)`` (bool), in bit order."""
        return self.grid.cell_masks()[self.players].to(self.x.device)


def check_finite(name: str, t: Tensor, gen: SplitGenerator) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        msg = (
            f"{name} of {gen.name}/{gen.layer} has {bad} NaN or inf values; "
            "check the model's weights or choose another seed or layer"
        )
        raise ValueError(msg)


def check_players(cfg: ExplainConfig, grid: Grid) -> list[int] | None:
    """The explicit players checked against the grid, or None when a rule chooses them (then
    ``n`` is checked)."""
    if cfg.players is not None:
        return grid.check_cells(list(cfg.players), "player cells")
    if not 1 <= cfg.players_count <= grid.cells:
        msg = (
            f"n={cfg.players_count} players do not fit a grid of {grid.cells} cells; "
            f"use 1..{grid.cells}"
        )
        raise ValueError(msg)
    return None


def build_target(
    cfg: ExplainConfig, gen: SplitGenerator, f0: Tensor | None = None, check: bool = True
) -> Target:
    """The target of ``cfg`` on ``gen``; the split's own check, the grid and the players before
    the baseline, whose batches are sized by the target's measured feature pass (``f0``: a
    baseline computed elsewhere, for ``--dry-run``'s stand-in; ``check=False`` skips the
    split's check, which ``--dry-run`` leaves to the run)."""
    device = gen.device
    class_index = gen.class_index(cfg.class_index)
    code = gen.sample_codes(1, cfg.seed, class_index)
    photo, fit = None, {}
    if cfg.image is not None:  # a photo: the code whose image is nearest to it
        with torch.no_grad():
            shape = tuple(gen.g(gen.d(code), code).shape[1:])
        photo = load_photo(cfg.image, shape, gen.value_range)
        code, fit = fit_code(gen, photo, gen.value_range, cfg.seed, class_index)
    with torch.no_grad():
        dims = gen.feature_dims()
        gen.set_memory_format(gen.d(code).dim() - 1 if dims is None else dims)  # before f
        with peak(device) as used:
            f = gen.d(code)[0]
        x = gen.g(f[None], code)[0]
    check_finite("feature f", f, gen)
    check_finite("image g(f)", x, gen)
    split_check = gen.check_split(code, f[None], x[None]) if check else {}
    grid = Grid(*cfg.grid, *x.shape[1:])
    players = check_players(cfg, grid)

    if f0 is None:
        batch = batch_that_fits(used.bytes, device, 250)
        f0 = baseline(gen, cfg.baseline_count, cfg.baseline_seed, batch=batch)
    f0 = f0.to(device)
    if cfg.f0_noise:  # perturbed baseline, for stability studies
        rng = torch.Generator().manual_seed(cfg.solver.perturb_seed)
        noise = torch.randn(f0.shape, generator=rng).to(device)
        f0 = f0 + cfg.f0_noise * f0.std() * noise
    check_finite("baseline feature f0", f0, gen)
    with torch.no_grad():
        baseline_image = gen.g(f0[None], code)[0]
    if players is None:
        n = cfg.players_count
        players = choose_players(cfg.player_rule, grid, n, x, baseline_image, cfg.player_seed)
    return Target(
        gen, code, f, f0, x, baseline_image, grid, players, class_index, split_check, photo, fit
    )
