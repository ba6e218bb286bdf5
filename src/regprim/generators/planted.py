"""A generator with planted, known regional primitives, to check the method against ground truth.

The feature ``f`` has shape ``(K, c)``: K groups of c numbers. Group k is rendered only into the
pixels of its set ``S_k`` of grid cells, through a nonlinear decoder::

    x = tanh( sum_k mask(S_k) * (W_k f_k) + b )

with fixed random ``W_k`` (c numbers -> every pixel of ``S_k``, injective on each cell). So a
subset ``S`` of players is reconstructed exactly when every group whose ``S_k`` meets ``S`` is
present and no other group is needed: the minimal feature is ``u(S) = f0 + sum over k with
S_k meeting S of (f_k - f0_k)``, and the OR components are exactly ``Delta f_k = f_k - f0_k`` on
group k (zero elsewhere) at bitmask ``S_k``, all other components zero.

The default primitives mix single cells, adjacent and non-adjacent multi-cell sets, and cells
shared by several primitives, over a 3x3 block of players in a 6x6 grid of a 48x48 image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from regprim.core.regions import Grid
from regprim.generators.base import SplitGenerator, gaussian_sampler

# Grid cell ids on the 6x6 grid (row * 6 + col); the players are the 3x3 block 7..21.
DEFAULT_PRIMITIVES: tuple[tuple[int, ...], ...] = (
    (7,),  # single cell
    (8, 9),  # adjacent pair
    (13,),  # single cell
    (14, 15, 21),  # adjacent L shape
    (9, 19),  # non-adjacent pair
    (20,),  # single cell
    (7, 21),  # non-adjacent pair (opposite corners)
    (14,),  # single cell also covered by another primitive
)
DEFAULT_PLAYERS: tuple[int, ...] = (7, 8, 9, 13, 14, 15, 19, 20, 21)


class Planted(SplitGenerator):
    """See the module docstring. ``primitives`` are tuples of grid cell ids."""

    def __init__(
        self,
        primitives: Sequence[Sequence[int]] = DEFAULT_PRIMITIVES,
        grid: tuple[int, int] = (6, 6),
        image_size: tuple[int, int] = (48, 48),
        channels_per_group: int = 4,
        seed: int = 0,
    ) -> None:
        self.primitives = [tuple(p) for p in primitives]
        k, c = len(self.primitives), channels_per_group
        super().__init__(
            name="planted",
            layer="features",
            layers=("features",),
            code_dim=k * c,
            sampler=gaussian_sampler(k * c),
            sees_code=False,
        )
        self.grid = Grid(*grid, *image_size)
        for prim in self.primitives:
            self.grid.check_cells(list(prim), "planted cells")
        rng = torch.Generator().manual_seed(seed)
        cells = self.grid.cell_masks().flatten(1).float()  # (cells, H*W)
        support = torch.stack([cells[list(p)].sum(0).clamp(max=1) for p in self.primitives])
        pixels = 3 * image_size[0] * image_size[1]
        weight = torch.randn(k, c, pixels, generator=rng) * (1.5 / c**0.5)
        self.decoder = nn.Module()
        self.decoder.register_buffer("weight", weight * support.repeat(1, 3)[:, None, :])
        self.decoder.register_buffer("bias", 0.2 * torch.randn(pixels, generator=rng))
        self.feature_shape = (k, c)
        self.image_size = image_size

    def modules(self) -> list[nn.Module]:
        return [self.decoder]

    def cut_at(self, layer: str) -> Planted:
        if layer != "features":
            msg = f"unknown layer {layer!r} for model 'planted'; valid layers: ['features']"
            raise ValueError(msg)
        return self

    def d(self, code: Tensor) -> Tensor:
        return 0.5 + code.view(code.shape[0], *self.feature_shape)

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        pre = torch.einsum("bkc,kcp->bp", f, self.decoder.weight) + self.decoder.bias
        return torch.tanh(pre).view(f.shape[0], 3, *self.image_size)

    def true_components(self, f: Tensor, f0: Tensor, players: Sequence[int]) -> dict[int, Tensor]:
        """{bitmask of S_k over ``players``: Delta f_k} for the primitives within the players."""
        truth: dict[int, Tensor] = {}
        for k, prim in enumerate(self.primitives):
            if not set(prim) <= set(players):
                continue
            mask = sum(1 << list(players).index(cell) for cell in prim)
            comp = torch.zeros_like(f)
            comp[k] = f[k] - f0[k]
            truth[mask] = truth.get(mask, 0) + comp
        return truth


def planted(layer: str | None = None) -> Planted:
    """The built-in planted-primitive generator (default primitives)."""
    if layer not in (None, "features"):
        msg = f"unknown layer {layer!r} for model 'planted'; valid layers: ['features']"
        raise ValueError(msg)
    return Planted().freeze()
