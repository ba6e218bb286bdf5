"""Diffusion models as split generators: a diffusers denoiser (``UNet2DModel``,
``UNet2DConditionModel``, ``DiTTransformer2DModel``) with a deterministic scheduler, sampled in
one to fifty steps, in pixel space or in a VAE's latent space (docs/models.md, "Diffusion").

The code is the sampler's starting noise, flattened (``code_shape`` is the latent's shape); a
class-conditional model appends the one-hot class, so the baseline averages all classes and
``--class`` picks one. Prompt embeddings (a tensor file: no text encoder is needed) and the
guidance scale are held fixed; classifier-free guidance runs the doubled batch inside ``g``.
Two kinds of cut:

- ``step=K``: the latent after K sampler steps (``K = 1 .. steps - 1``, and ``K = steps`` when a
  VAE decodes it). Everything from the code to the image passes through it, so ``g`` does not
  see the code: ``d`` runs K steps, ``g`` the remaining ones and the decoder.
- ``BLOCK@step=K``: the output of a block of the denoiser in step K (0-based): ``mid_block``,
  ``up_blocks.1``, ``transformer_blocks.3``, any unit of
  :func:`regprim.generators.stages.units`. The step's input latent (the scheduler's update adds
  it back) and the outputs of the blocks before the cut that later blocks consume (a U-Net's
  skip tensors) reach ``g`` around the cut: they are held at the target's values, computed once
  per code and replayed, and ``g`` runs only the rest of step K and the steps after it. Under
  guidance the feature holds the block's output of both passes (unconditional first) on the
  channel axis; a transformer's tokens are laid out on their patch grid ``(dim, h, w)``.

The scheduler must be deterministic (DDIM with ``eta = 0``, Euler, DPM-Solver, ...): ``g`` must
give the same image for the same feature, and it is compared with the model's own sampler
(``tests/test_diffusion.py``). :mod:`regprim.generators.vae` cuts a VAE's decoder alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from regprim.generators.base import CodeSampler, SplitGenerator
from regprim.generators.stages import Stages, pack_state, units, unpack_state

SKIPS = ("hold", "carry")


def noise_sampler(shape: tuple[int, ...], num_classes: int = 0) -> CodeSampler:
    """Codes: standard normal noise of ``shape``, flattened, then the one-hot class."""
    numel = math.prod(shape)

    def sample(count: int, rng: torch.Generator, classes: Tensor | None) -> Tensor:
        z = torch.randn(count, numel, generator=rng)
        if not num_classes:
            return z
        assert classes is not None
        return torch.cat([z, nn.functional.one_hot(classes, num_classes).to(z.dtype)], dim=1)

    return sample


def parse_cut(layer: str, steps: int, latent_steps: range, blocks: list[str]) -> tuple[str, int]:
    """``step=K`` -> ``("", K)``; ``BLOCK@step=K`` -> ``(BLOCK, K)``; anything else is an error
    that names the valid cuts."""
    block, _, step = layer.rpartition("@") if "@" in layer else ("", "", layer)
    valid = (
        f"step=K with K in {list(latent_steps)} (the latent after K of {steps} steps), or "
        f"BLOCK@step=K with K in 0..{steps - 1} and BLOCK one of {blocks}"
    )
    key, _, value = step.partition("=")
    if key != "step" or not value.lstrip("-").isdigit():
        msg = f"unknown cut {layer!r}; use {valid}"
        raise ValueError(msg)
    k = int(value)
    if block and block not in blocks:
        msg = f"no block {block!r} in the denoiser; use {valid}"
        raise ValueError(msg)
    if (not block and k not in latent_steps) or (block and not 0 <= k < steps):
        msg = f"cut {layer!r}: step {k} is beyond this {steps}-step sampler; use {valid}"
        raise ValueError(msg)
    return block, k


class DiffusionSplit(SplitGenerator):
    """A diffusers denoiser and scheduler sampled in ``steps`` steps, cut at ``layer``.

    Args:
        denoiser: a diffusers ``UNet2DModel``, ``UNet2DConditionModel`` or
            ``DiTTransformer2DModel`` (anything called as ``denoiser(x, t, **kwargs).sample``).
        scheduler: a deterministic diffusers scheduler (copied; ``set_timesteps(steps)``).
        steps: sampler steps (1: a one-step model).
        layer: the cut (module docstring); None: the family's default (:func:`default_cut`).
        vae: an ``AutoencoderKL`` whose decoder turns the final latent into the image.
        num_classes: classes of a class-conditional denoiser (0: unconditional).
        null_class: the class label of the unconditional pass under guidance (DiT: the
            number of classes).
        prompt_embeds: ``(1, tokens, dim)`` for a ``UNet2DConditionModel``.
        negative_embeds: the unconditional pass's embeddings under guidance.
        guidance: classifier-free guidance scale (1: no guidance, one pass per step).
        gradient_checkpointing: recompute each remaining step in the backward pass instead of
            keeping its activations (less memory, about one more forward per step).
        skips: for a block cut, what to do with what reaches ``g`` around it (the step's input
            latent, the skip tensors): ``hold`` them at the target's values (the feature is the
            block's output; ``g`` sees the code), or ``carry`` them in the feature (one flat
            vector of the block's output, the input latent and every earlier block's output:
            a true cut, without a spatial layout).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler: Any,
        steps: int,
        layer: str | None = None,
        *,
        vae: nn.Module | None = None,
        num_classes: int = 0,
        null_class: int | None = None,
        prompt_embeds: Tensor | None = None,
        negative_embeds: Tensor | None = None,
        guidance: float = 1.0,
        gradient_checkpointing: bool = False,
        skips: str = "hold",
        name: str = "diffusion",
        class_names: tuple[str, ...] = (),
    ) -> None:
        if steps < 1:
            msg = f"steps={steps} must be at least 1"
            raise ValueError(msg)
        self.denoiser, self.scheduler, self.steps, self.vae = denoiser, scheduler, steps, vae
        self.num_classes, self.null_class, self.guidance = num_classes, null_class, guidance
        self.prompt_embeds, self.negative_embeds = prompt_embeds, negative_embeds
        self.gradient_checkpointing = gradient_checkpointing
        if skips not in SKIPS:
            msg = f"skips={skips!r} is not one of {list(SKIPS)}"
            raise ValueError(msg)
        self.skips = skips
        self._check_guidance()
        cfg = denoiser.config
        size = cfg.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (cfg.in_channels, height, width)
        self.blocks = list(units(denoiser))
        self.latent_steps = range(1, steps + (vae is not None))
        layers = [f"step={k}" for k in self.latent_steps] + [
            f"{b}@step={k}" for k in range(steps) for b in self.blocks
        ]
        layer = layer or default_cut(steps, vae is not None)
        self.block, self.k = parse_cut(layer, steps, self.latent_steps, self.blocks)
        self.stages = Stages(denoiser, self.block) if self.block else None
        self._prefix: tuple[Tensor, Any] | None = None
        held = bool(self.block) and skips == "hold"
        super().__init__(
            name=name,
            layer=layer,
            layers=tuple(layers),
            code_dim=math.prod(self.latent_shape) + num_classes,
            code_shape=self.latent_shape,
            sampler=noise_sampler(self.latent_shape, num_classes),
            num_classes=num_classes,
            class_names=class_names,
            sees_code=held,
            around_cut=self._around_cut() if held else "",
        )

    def _check_guidance(self) -> None:
        if self.guidance == 1.0:
            return
        if self.prompt_embeds is None and self.null_class is None:
            msg = (
                f"guidance={self.guidance} needs an unconditional pass: give null_class (a class "
                "label for 'no class') or prompt embeddings with negative_embeds"
            )
            raise ValueError(msg)
        if self.prompt_embeds is not None and self.negative_embeds is None:
            msg = f"guidance={self.guidance} with prompt embeddings needs negative_embeds"
            raise ValueError(msg)

    def _around_cut(self) -> str:
        if not self.block:
            return ""
        return (
            f"a cut inside step {self.k} ({self.block}): the step's input latent, and the outputs "
            "of the blocks before it that later blocks consume (skip tensors), reach g around "
            "the cut; they are held at the target's values, so g depends on the code"
        )

    def modules(self) -> list[nn.Module]:
        return [self.denoiser] + ([self.vae] if self.vae is not None else [])

    def cut_at(self, layer: str) -> DiffusionSplit:
        return DiffusionSplit(
            self.denoiser,
            self.scheduler,
            self.steps,
            layer,
            vae=self.vae,
            num_classes=self.num_classes,
            null_class=self.null_class,
            prompt_embeds=self.prompt_embeds,
            negative_embeds=self.negative_embeds,
            guidance=self.guidance,
            gradient_checkpointing=self.gradient_checkpointing,
            skips=self.skips,
            name=self.name,
            class_names=self.class_names,
        ).freeze()

    def cost(self) -> str:
        """What one evaluation of ``g`` runs (``--dry-run`` prints it)."""
        calls = self.steps - self.k - (1 if self.block else 0)
        per = 2 if self.guidance != 1.0 else 1
        what = f"{calls} of {self.steps} sampler steps"
        if self.block:
            what = f"the rest of step {self.k} after {self.block}, then {what}"
        decoder = ", then the VAE decoder" if self.vae is not None else ""
        return f"g runs {what} ({per} denoiser pass(es) per step){decoder}"

    # -- the sampler, in pieces ---------------------------------------------------------------
    def _timesteps(self) -> Tensor:
        self.scheduler.set_timesteps(self.steps)  # also resets a stateful scheduler's index
        return self.scheduler.timesteps

    def _split_code(self, code: Tensor) -> tuple[Tensor, Tensor | None]:
        """Codes -> starting noise ``(B, *latent_shape)`` and class labels (or None)."""
        numel = math.prod(self.latent_shape)
        noise = code[:, :numel].reshape(-1, *self.latent_shape)
        labels = code[:, numel:].argmax(1) if self.num_classes else None
        return noise * self.scheduler.init_noise_sigma, labels

    def _call(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The denoiser on ``x`` at ``t`` (the doubled batch under guidance, unconditional
        first): its raw output ``(B or 2B, ...)``."""
        batch = len(x)
        x = self.scheduler.scale_model_input(x, t)
        guided = self.guidance != 1.0
        kwargs: dict[str, Tensor] = {}
        if labels is not None:
            null = torch.full_like(labels, self.null_class or 0)
            kwargs["class_labels"] = torch.cat([null, labels]) if guided else labels
        if self.prompt_embeds is not None:
            cond = self.prompt_embeds.to(x.device).expand(batch, -1, -1)
            if guided:
                neg = self.negative_embeds.to(x.device).expand(batch, -1, -1)  # type: ignore[union-attr]
                cond = torch.cat([neg, cond])
            kwargs["encoder_hidden_states"] = cond
        x_in = torch.cat([x, x]) if guided else x
        return self.denoiser(x_in, t.to(x.device).expand(len(x_in)), **kwargs).sample

    def _combine(self, out: Tensor) -> Tensor:
        """The guided prediction from the raw output (a learned variance half dropped)."""
        channels = self.latent_shape[0]
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]
        if self.guidance == 1.0:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _update(self, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        return self.scheduler.step(self._combine(out), t, x).prev_sample

    def _steps(self, x: Tensor, start: int, stop: int, labels: Tensor | None) -> Tensor:
        timesteps = self._timesteps()
        for k in range(start, stop):
            t = timesteps[k]

            def step(x: Tensor, t: Tensor = t) -> Tensor:
                return self._update(self._call(x, t, labels), t, x)

            use = self.gradient_checkpointing and torch.is_grad_enabled()
            x = checkpoint(step, x, use_reentrant=False) if use else step(x)
        return x

    def _decode(self, x: Tensor) -> Tensor:
        if self.vae is None:
            return x
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return self.vae.decode(x / cfg.scaling_factor + shift).sample

    def sample(self, code: Tensor) -> Tensor:
        """The model's own sampler, uncut: images ``(B, C, H, W)`` of codes."""
        noise, labels = self._split_code(code)
        return self._decode(self._steps(noise, 0, self.steps, labels))

    # -- the split ----------------------------------------------------------------------------
    def _pack(self, raw: Tensor, batch: int) -> Tensor:
        """A block's output -> the feature ``(B, C, h, w)``: tokens on their patch grid, the
        two guided passes on the channel axis."""
        if raw.dim() == 3:  # (N, tokens, dim)
            side = math.isqrt(raw.shape[1])
            raw = raw.transpose(1, 2).reshape(len(raw), raw.shape[2], side, side)
        if self.guidance != 1.0:
            raw = raw.reshape(2, batch, *raw.shape[1:]).transpose(0, 1)
            raw = raw.reshape(batch, -1, *raw.shape[3:])
        return raw

    def _unpack(self, f: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`_pack`, shaped like the block's output ``like``."""
        batch = len(f)
        if self.guidance != 1.0:
            f = (
                f.reshape(batch, 2, -1, *f.shape[2:])
                .transpose(0, 1)
                .reshape(2 * batch, -1, *f.shape[2:])
            )
        if like.dim() == 3:
            f = f.flatten(2).transpose(1, 2)
        return f

    def _capture(self, code: Tensor) -> tuple[Tensor, Tensor | None, Any, list]:
        """Steps before the cut, then step ``k`` up to the cut block: the step's input latent,
        the labels, the block's output and the calls before it."""
        noise, labels = self._split_code(code)
        x = self._steps(noise, 0, self.k, labels)
        t = self._timesteps()[self.k]
        assert self.stages is not None
        out, calls = self.stages.capture(lambda: self._call(x, t, labels))
        return x, labels, out, calls

    def d(self, code: Tensor) -> Tensor:
        if not self.block:
            noise, labels = self._split_code(code)
            return self._steps(noise, 0, self.k, labels)
        x, _, out, calls = self._capture(code)
        if self.skips == "carry":
            return pack_state([x, *(o for _, o in calls), out], len(code))
        assert self.stages is not None
        return self._pack(self.stages.feature_of(out), len(code))

    def _held(self, code: Tensor) -> tuple[Tensor, Tensor | None, Any, list]:
        """What precedes the cut for one code, computed once and kept for the next call."""
        if self._prefix is not None and torch.equal(self._prefix[0], code):
            return self._prefix[1]
        with torch.no_grad():
            held = self._capture(code)
        self._prefix = (code.clone(), held)
        return held

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        if not self.block:
            labels = self._split_code(code)[1]
            if labels is not None:
                labels = labels.expand(len(f))
            return self._decode(self._steps(f, self.k, self.steps, labels))
        if len(code) > 1 and not bool((code == code[:1]).all()):
            return torch.cat([self.g(f[i : i + 1], code[i : i + 1]) for i in range(len(f))])
        x, labels, out, calls = self._held(code[:1])
        assert self.stages is not None
        batch, passes = len(f), 2 if self.guidance != 1.0 else 1
        labels = None if labels is None else labels.expand(batch)
        t = self._timesteps()[self.k]
        if self.skips == "carry":  # everything that crosses the cut comes from f
            x, *outs, out = unpack_state(f, [x, *(o for _, o in calls), out], 1)
            calls = [(name, o) for (name, _), o in zip(calls, outs, strict=True)]
            raw, repeat = self.stages.feature_of(out), 1
        else:
            x = x.expand(batch, *x.shape[1:])
            raw, repeat = self._unpack(f, self.stages.feature_of(out)), batch
        result = self.stages.resume(
            lambda: self._call(x, t, labels), calls, out, raw, passes, repeat
        )
        x = self._update(result, t, x)
        return self._decode(self._steps(x, self.k + 1, self.steps, labels))


def default_cut(steps: int, has_vae: bool) -> str:
    """The family's default: the latent halfway through the sampler (a true cut); a one-step
    pixel model has no latent between steps, so its mid block."""
    if steps >= 2:
        return f"step={steps // 2}"
    return f"step={steps}" if has_vae else "mid_block@step=0"
