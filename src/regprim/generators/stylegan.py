"""StyleGAN-like generators as split generators: a mapping network ``z -> w`` and a synthesis
network ``ws -> image`` cut at one of its blocks (docs/models.md, "StyleGAN").

No maintained package on PyPI builds StyleGAN2 with its official layer names, so this is a
recipe over the structure every StyleGAN2/3 implementation shares (NVlabs' ``G.mapping`` and
``G.synthesis``, whose blocks ``b4, b8, ...`` return ``(x, img)``), tested on a small model in
``tests/test_stylegan.py``:

- the code is ``w`` (``w_dim`` numbers), drawn as the model draws it: ``w = mapping(z)`` for
  ``z ~ N(0, I)``, then truncated towards ``w_avg`` by ``truncation`` (psi); every synthesis layer
  gets the same ``w`` (``ws``: ``num_ws`` copies);
- noise inputs must be fixed (NVlabs: ``noise_mode="const"``): pass them inside ``call``;
- the cut is a block of the synthesis network (any unit of
  :func:`regprim.generators.stages.units`); its feature is the block's ``x`` (``output_index``).
  What reaches ``g`` around it, the image the ``toRGB`` layers accumulated before the cut and
  the styles of the later layers, is held at the target's values: the blocks before the cut are
  computed once per code and replayed, so ``g`` runs only the blocks after the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from regprim.generators.base import SplitGenerator
from regprim.generators.stages import Stages, units


class StyleSplit(SplitGenerator):
    """A StyleGAN-like generator cut at block ``layer`` of ``synthesis``.

    Args:
        mapping: ``z (B, z_dim) -> w``: ``(B, w_dim)`` or ``(B, num_ws, w_dim)`` (the first is
            taken).
        synthesis: the synthesis network, called as ``call(synthesis, ws)`` with ``ws`` of
            shape ``(B, num_ws, w_dim)``.
        layer: a block of ``synthesis`` (``b16``); its output's ``output_index`` entry is the
            feature.
        z_dim, w_dim, num_ws: the sizes of z and w, and how many layers take a w.
        truncation: psi; 1 draws w untruncated.
        w_avg: the centre of truncation (default: ``mapping.w_avg`` if it has one, else the
            mean of 10 000 seeded draws).
        call: runs the synthesis network with fixed noise (default ``synthesis(ws)``).
    """

    def __init__(
        self,
        mapping: nn.Module,
        synthesis: nn.Module,
        layer: str,
        *,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        truncation: float = 1.0,
        w_avg: Tensor | None = None,
        output_index: int | None = 0,
        call: Callable[[nn.Module, Tensor], Tensor] | None = None,
        name: str = "stylegan",
    ) -> None:
        self.mapping, self.synthesis = mapping, synthesis
        self.z_dim, self.num_ws, self.truncation = z_dim, num_ws, truncation
        self.call = call or (lambda module, ws: module(ws))
        self.output_index = output_index
        self.stages = Stages(synthesis, layer, output_index)
        self._prefix: tuple[Tensor, Any] | None = None
        if w_avg is None:
            w_avg = getattr(mapping, "w_avg", None)
        self.w_avg = self._mean_w() if w_avg is None else w_avg.detach().reshape(-1)
        super().__init__(
            name=name,
            layer=layer,
            layers=tuple(units(synthesis)),
            code_dim=w_dim,
            sampler=self._sample_w,
            sees_code=True,
            around_cut=(
                f"a cut at {layer} of the synthesis network: the image the toRGB layers "
                "accumulated before it and the styles of the later layers reach g around the "
                "cut; they are held at the target's values, so g depends on the code"
            ),
        )

    def _w(self, z: Tensor) -> Tensor:
        w = self.mapping(z)
        return w[:, 0] if w.dim() == 3 else w

    @torch.no_grad()
    def _mean_w(self) -> Tensor:
        z = torch.randn(10_000, self.z_dim, generator=torch.Generator().manual_seed(0))
        return self._w(z).mean(0)

    @torch.no_grad()
    def _sample_w(self, count: int, rng: torch.Generator, classes: Tensor | None) -> Tensor:
        w = self._w(torch.randn(count, self.z_dim, generator=rng).to(self.w_avg.device))
        return (self.w_avg + self.truncation * (w - self.w_avg)).cpu()

    def modules(self) -> list[nn.Module]:
        return [self.mapping, self.synthesis]

    def to(self, device: str | torch.device) -> StyleSplit:
        super().to(device)
        self.w_avg = self.w_avg.to(self.device)
        return self

    def cut_at(self, layer: str) -> StyleSplit:
        return StyleSplit(
            self.mapping,
            self.synthesis,
            layer,
            z_dim=self.z_dim,
            w_dim=self.code_dim,
            num_ws=self.num_ws,
            truncation=self.truncation,
            w_avg=self.w_avg,
            output_index=self.output_index,
            call=self.call,
            name=self.name,
        ).freeze()

    def _run(self, w: Tensor) -> Callable[[], Tensor]:
        ws = w[:, None].expand(-1, self.num_ws, -1)
        return lambda: self.call(self.synthesis, ws)

    def d(self, code: Tensor) -> Tensor:
        return self.stages.feature_of(self.stages.capture(self._run(code))[0])

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        if len(code) > 1 and not bool((code == code[:1]).all()):
            return torch.cat([self.g(f[i : i + 1], code[i : i + 1]) for i in range(len(f))])
        code = code[:1]
        if self._prefix is None or not torch.equal(self._prefix[0], code):
            with torch.no_grad():
                self._prefix = (code.clone(), self.stages.capture(self._run(code)))
        out, calls = self._prefix[1]
        w = code.expand(len(f), -1)
        return self.stages.resume(self._run(w), calls, out, f, 1, len(f))
