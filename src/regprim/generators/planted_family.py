"""A seeded family of generators with planted, known primitives: the method's ground truth.

``planted_family(seed)`` draws one member. Every member renders K groups of feature numbers,
group k only into the pixels of its set ``S_k`` of grid cells::

    x = tanh( sum_k mask(S_k) * decoder_k(f[group k]) + background )

and each decoder makes every pixel of ``S_k`` depend on every number of its group (generically
injective on each cell). So a subset S of the players is reconstructed exactly when every group
whose ``S_k`` meets S is present, and no other group is needed: the OR component of the players
``S_k ∩ N`` is ``f - f0`` on group k, every other component is zero (:meth:`truth`). Numbers
that belong to no group (``dead``) are never needed.

What varies between members (drawn from the seed):

- feature layout: a flat vector, or a ``(C, h, w)`` map with the groups scattered over it;
- group sizes (2 to 8 numbers) and how many groups (4 to 9), plus unused numbers;
- action sets: single cells, adjacent and non-adjacent pairs, triples, sets sharing cells with
  other sets, and sets reaching beyond the players;
- decoders: linear, a small MLP per group, or a transposed-convolution stack;
- image size and grid (6x6 on 48x48, 6x6 on 36x54, an uneven 5x7 on 40x45, 4x4 on 32x32);
- players (a central block or cells spread over the grid, 4 to 9 of them);
- the cut: ``split_sequential`` (a sliced ``nn.Sequential``) or ``HookSplit`` (forward hooks).

The truth does not use :class:`regprim.core.regions.Grid`: cell boxes are computed here from the
documented convention (row-major ids, edges at ``round(r * height / rows)``), so a geometry error
in the library shows up as a failed recovery.

The features are ``f = 0.5 + z + sign(z)`` for a Gaussian code z: every number differs from the
baseline by at least 1, so every planted component is well above the salient threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from regprim.generators.base import SplitGenerator, gaussian_sampler, split_sequential
from regprim.generators.hooks import HookSplit

SHAPES = ((48, 48, 6, 6), (36, 54, 6, 6), (40, 45, 5, 7), (32, 32, 4, 4))
LAYOUTS = ("flat", "map")
DECODERS = ("linear", "mlp", "conv")
CUTS = ("sequential", "hook")
KINDS = ("single", "adjacent", "apart", "triple", "overlap", "outside")


def cell_boxes(height: int, width: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every cell, row-major (written independently of Grid)."""
    r_edges = [round(r * height / rows) for r in range(rows + 1)]
    c_edges = [round(c * width / cols) for c in range(cols + 1)]
    return [
        (r_edges[r], r_edges[r + 1], c_edges[c], c_edges[c + 1])
        for r in range(rows)
        for c in range(cols)
    ]


@dataclass
class PlantedSpec:
    """What a member of the family is made of (all drawn from its seed)."""

    seed: int
    height: int
    width: int
    rows: int
    cols: int
    players: list[int]
    primitives: list[tuple[int, ...]]
    group_sizes: list[int]
    dead: int
    layout: str
    decoder: str
    cut: str
    feature_shape: tuple[int, ...] = field(default=())


class FeatureHead(nn.Module):
    """Codes -> features ``0.5 + z + sign(z)`` in the member's layout."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, z: Tensor) -> Tensor:
        return (0.5 + z + torch.sign(z)).view(z.shape[0], *self.shape)


class GroupDecoder(nn.Module):
    """One group's numbers -> an image ``(B, 3, H, W)`` that is zero outside its cells.

    Every pixel of every cell depends on every number of the group, with comparable strength in
    every cell: the linear and MLP decoders map the numbers to each pixel with random weights;
    the convolutional one grows a 16x16 pattern per cell from a 1x1 start (so every position
    depends on every number) and resizes it to the cell.
    """

    def __init__(
        self, kind: str, size: int, boxes: list[tuple[int, int, int, int]], shape, rng
    ) -> None:
        super().__init__()
        self.kind, self.size, self.boxes = kind, size, boxes
        self.height, self.width = shape
        cells = len(boxes)
        pixels = 3 * self.height * self.width

        def weight(*dims: int, fan_in: int, gain: float = 1.5) -> nn.Parameter:
            w = torch.randn(*dims, generator=rng) * (gain / math.sqrt(fan_in))
            return nn.Parameter(w, requires_grad=False)

        if kind == "linear":
            self.w = weight(size, pixels, fan_in=size)
        elif kind == "mlp":
            self.w1 = weight(size, 16, fan_in=size)
            self.w2 = weight(16, pixels, fan_in=16)
        else:  # transposed convolutions 1x1 -> 4x4 -> 8x8 -> 16x16, 3 channels per cell
            self.c1 = weight(size, 8, 4, 4, fan_in=size)
            self.c2 = weight(8, 8, 4, 4, fan_in=8 * 4)
            self.c3 = weight(8, 3 * cells, 4, 4, fan_in=8 * 4)
        mask = torch.zeros(1, 1, self.height, self.width)
        for top, bottom, left, right in boxes:
            mask[..., top:bottom, left:right] = 1
        self.register_buffer("mask", mask)

    def forward(self, g: Tensor) -> Tensor:
        b = g.shape[0]
        if self.kind == "linear":
            return self.mask * (g @ self.w).view(b, 3, self.height, self.width)
        if self.kind == "mlp":
            out = torch.tanh(g @ self.w1) @ self.w2
            return self.mask * out.view(b, 3, self.height, self.width)
        h = nn.functional.conv_transpose2d(g.view(b, self.size, 1, 1), self.c1)
        h = nn.functional.conv_transpose2d(torch.tanh(h), self.c2, stride=2, padding=1)
        h = nn.functional.conv_transpose2d(torch.tanh(h), self.c3, stride=2, padding=1)
        out = g.new_zeros(b, 3, self.height, self.width)
        for k, (top, bottom, left, right) in enumerate(self.boxes):
            patch = h[:, 3 * k : 3 * k + 3]
            out[..., top:bottom, left:right] = nn.functional.interpolate(
                patch, size=(bottom - top, right - left), mode="bilinear", align_corners=False
            )
        return out


class PlantedDecoder(nn.Module):
    """Features -> image: each group's decoder on its cells, summed, plus a background."""

    def __init__(self, spec: PlantedSpec, rng: torch.Generator) -> None:
        super().__init__()
        h, w = spec.height, spec.width
        boxes = cell_boxes(h, w, spec.rows, spec.cols)
        numel = math.prod(spec.feature_shape)
        order = (
            torch.randperm(numel, generator=rng) if spec.layout == "map" else torch.arange(numel)
        )
        starts = [sum(spec.group_sizes[:k]) for k in range(len(spec.group_sizes))]
        self.index = [order[s : s + c] for s, c in zip(starts, spec.group_sizes, strict=True)]
        self.register_buffer("background", 0.3 * torch.randn(1, 3, h, w, generator=rng))
        self.decoders = nn.ModuleList(
            GroupDecoder(spec.decoder, c, [boxes[cell] for cell in sorted(set(prim))], (h, w), rng)
            for c, prim in zip(spec.group_sizes, spec.primitives, strict=True)
        )

    def forward(self, f: Tensor) -> Tensor:
        flat = f.reshape(f.shape[0], -1)
        pre = self.background.expand(f.shape[0], -1, -1, -1)
        for index, decoder in zip(self.index, self.decoders, strict=True):
            pre = pre + decoder(flat[:, index])
        return torch.tanh(pre)


class HookedPlanted(nn.Module):
    """The same model for a ``HookSplit``: cut at the submodule ``features``."""

    def __init__(self, head: FeatureHead, decoder: PlantedDecoder) -> None:
        super().__init__()
        self.features, self.decoder = head, decoder

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.features(z))


@dataclass
class PlantedMember:
    """A member of the family: its generator, the players to explain it with, and the truth."""

    spec: PlantedSpec
    generator: SplitGenerator
    decoder: PlantedDecoder

    @property
    def players(self) -> list[int]:
        return list(self.spec.players)

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.rows, self.spec.cols

    def truth(self, f: Tensor, f0: Tensor) -> dict[int, Tensor]:
        """``{bitmask of S_k ∩ players: Delta f}`` for every group that reaches a player."""
        out: dict[int, Tensor] = {}
        players = self.players
        for k, prim in enumerate(self.spec.primitives):
            mask = sum(1 << players.index(c) for c in set(prim) if c in players)
            if not mask:
                continue
            comp = torch.zeros(f.numel(), dtype=f.dtype)
            idx = self.decoder.index[k]
            comp[idx] = (f - f0).reshape(-1)[idx]
            out[mask] = out.get(mask, 0) + comp.view(f.shape)
        return out


def _neighbours(cell: int, rows: int, cols: int) -> list[int]:
    r, c = divmod(cell, cols)
    near = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))]
    return [i * cols + j for i, j in near if 0 <= i < rows and 0 <= j < cols]


def _players(rows: int, cols: int, n: int, spread: bool, rng: torch.Generator) -> list[int]:
    if spread:
        return [int(c) for c in torch.randperm(rows * cols, generator=rng)[:n]]
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    near = sorted(
        range(rows * cols), key=lambda c: ((c // cols - cy) ** 2 + (c % cols - cx) ** 2, c)
    )
    block = near[:n]
    return [block[int(i)] for i in torch.randperm(n, generator=rng)]  # any bit order


def _action_set(
    kind: str, players: list[int], used: list[tuple[int, ...]], rows: int, cols: int, pick
):
    cell = pick(players)
    if kind == "single":
        return (cell,)
    if kind == "adjacent":
        near = [c for c in _neighbours(cell, rows, cols) if c in players] or players
        return tuple(sorted({cell, pick(near)}))
    if kind == "apart":
        far = [c for c in players if c not in _neighbours(cell, rows, cols) and c != cell]
        return tuple(sorted({cell, pick(far or players)}))
    if kind == "triple":
        return tuple(sorted({cell, pick(players), pick(players)}))
    if kind == "overlap" and used:
        shared = pick([c for prim in used for c in prim])
        return tuple(sorted({shared, pick(players)}))
    outside = [c for c in range(rows * cols) if c not in players]
    return tuple(sorted({cell, pick(outside or players)}))


def draw_spec(seed: int) -> PlantedSpec:
    """The member of ``seed``: every choice in the module docstring, drawn."""
    rng = torch.Generator().manual_seed(seed)

    def pick(options):
        options = list(options)
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    height, width, rows, cols = pick(SHAPES)
    n = int(torch.randint(4, 10, (1,), generator=rng))
    players = _players(
        rows, cols, min(n, rows * cols), bool(torch.rand(1, generator=rng) < 0.4), rng
    )
    groups = int(torch.randint(4, 10, (1,), generator=rng))
    primitives: list[tuple[int, ...]] = []
    for _ in range(groups):
        primitives.append(_action_set(pick(KINDS), players, primitives, rows, cols, pick))
    sizes = [int(torch.randint(2, 9, (1,), generator=rng)) for _ in range(groups)]
    dead = int(torch.randint(0, sum(sizes) // 2 + 1, (1,), generator=rng))
    layout = pick(LAYOUTS)
    numel = sum(sizes) + dead
    if layout == "map":
        side = pick((2, 3))
        channels = -(-numel // (side * side))
        shape: tuple[int, ...] = (channels, side, side)
    else:
        shape = (numel,)
    return PlantedSpec(
        seed,
        height,
        width,
        rows,
        cols,
        players,
        primitives,
        sizes,
        math.prod(shape) - sum(sizes),
        layout,
        pick(DECODERS),
        pick(CUTS),
        shape,
    )


def planted_family(seed: int, full_grid: bool = False) -> PlantedMember:
    """The family member drawn from ``seed`` (see the module docstring); with ``full_grid``,
    every cell of its grid is a player."""
    spec = draw_spec(seed)
    if full_grid:
        spec.players = list(range(spec.rows * spec.cols))
    rng = torch.Generator().manual_seed(10_000 + seed)
    head = FeatureHead(spec.feature_shape)
    decoder = PlantedDecoder(spec, rng)
    numel = math.prod(spec.feature_shape)
    name = f"planted-family-{seed}"
    if spec.cut == "sequential":
        gen: SplitGenerator = split_sequential(
            nn.Sequential(head, decoder), "0", name=name, code_dim=numel, code_to_input=lambda z: z
        )
    else:
        gen = HookSplit(
            HookedPlanted(head, decoder),
            "features",
            lambda m, z: m(z),
            name=name,
            code_dim=numel,
            sampler=gaussian_sampler(numel),
        )
    return PlantedMember(spec, gen.freeze(), decoder)


def recovery(member: PlantedMember, run) -> dict:
    """How well a run recovered the member's truth, and whether it passes the criterion: the
    salient set is the planted sets, each at cosine >= 0.99 to its true component, every
    other component below 1% of the smallest planted one, every subset meets the
    reconstruction constraint, universal matching residual <= 1e-5."""
    truth = member.truth(run.f, run.f0)
    found = run.component(list(truth))
    cosines = {
        k: float(nn.functional.cosine_similarity(c.flatten(), t.flatten(), dim=0))
        for (k, t), c in zip(truth.items(), found, strict=True)
    }
    smallest = min(float(t.norm()) for t in truth.values())
    others = [
        float(v)
        for k, v in zip(run.table.masks.tolist(), run.table.norms.tolist(), strict=True)
        if k not in truth
    ]
    worst = max(others, default=0.0)
    s = run.summary
    result = {
        "seed": member.spec.seed,
        "salient_is_planted": sorted(run.salient) == sorted(truth),
        "min_cosine": min(cosines.values()),
        "other_over_planted": worst / smallest,
        "meeting": s["subsets_meeting_constraint"],
        "um_residual": s["universal_matching_max_rel_residual"],
    }
    result["passed"] = bool(
        result["salient_is_planted"]
        and result["min_cosine"] >= 0.99
        and result["other_over_planted"] < 0.01
        and result["meeting"] == 1.0
        and result["um_residual"] <= 1e-5
    )
    return result
