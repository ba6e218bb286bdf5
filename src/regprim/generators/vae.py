"""A VAE's decoder alone as a generator (latent = code), cut at one of its blocks.

Latent diffusion decodes its final latent with such a decoder; alone, it is a generator whose
code is the latent (docs/models.md, "Diffusion").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from regprim.generators.base import SplitGenerator
from regprim.generators.diffusion import noise_sampler
from regprim.generators.stages import Stages, units


class DecoderSplit(SplitGenerator):
    """A VAE's decoder alone as a generator: the code is the latent (standard normal, scaled by
    the VAE's ``scaling_factor`` as latent diffusion does), cut at a block of the decoder. The
    decoder has no skip connections, so every cut is a true one (``g`` does not see the code;
    the blocks before the cut are replayed from a cache only to reach it)."""

    def __init__(
        self,
        vae: nn.Module,
        layer: str = "mid_block",
        latent_size: int | None = None,
        name: str = "vae-decoder",
    ) -> None:
        cfg = vae.config
        size = latent_size or cfg.sample_size // 2 ** (len(cfg.block_out_channels) - 1)
        self.vae, self.latent_shape = vae, (cfg.latent_channels, size, size)
        self.stages = Stages(vae.decoder, layer)
        self._prefix: tuple[Tensor, Any] | None = None
        super().__init__(
            name=name,
            layer=layer,
            layers=tuple(units(vae.decoder)),
            code_dim=math.prod(self.latent_shape),
            code_shape=self.latent_shape,
            sampler=noise_sampler(self.latent_shape),
        )

    def modules(self) -> list[nn.Module]:
        return [self.vae]

    def cut_at(self, layer: str) -> DecoderSplit:
        return DecoderSplit(self.vae, layer, self.latent_shape[1], self.name).freeze()

    def _run(self, code: Tensor) -> Callable[[], Tensor]:
        cfg = self.vae.config
        latent = code.reshape(-1, *self.latent_shape) / cfg.scaling_factor
        return lambda: self.vae.decode(latent).sample

    def d(self, code: Tensor) -> Tensor:
        return self.stages.capture(self._run(code))[0]  # type: ignore[return-value]

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        code = code[:1]
        if self._prefix is None or not torch.equal(self._prefix[0], code):
            with torch.no_grad():
                self._prefix = (code.clone(), self.stages.capture(self._run(code)))
        out, calls = self._prefix[1]
        return self.stages.resume(self._run(code), calls, out, f, 1, len(f))


def vae_decoder(vae: nn.Module, layer: str = "mid_block", **kwargs) -> DecoderSplit:
    """A VAE's decoder cut at ``layer`` (a block of ``vae.decoder``), the latent as the code."""
    return DecoderSplit(vae, layer, **kwargs)
