"""Diffusion models as split generators: a diffusers denoiser and a deterministic scheduler,
sampled as the folder's own pipeline samples (:mod:`regprim.generators.families`), cut between
two denoiser steps or inside one (docs/models.md, "Diffusion").

The code is the sampler's starting noise, flattened (``code_shape`` is the latent's shape,
unpacked); a class-conditional model appends the one-hot class, so the baseline averages all
classes and ``--class`` picks one. The prompt's embeddings and the guidance are held fixed; the
unconditional pass of classifier-free guidance runs in the same batch inside ``g``. Two kinds of
cut, ``K`` counting the sampler's denoiser steps (a second-order scheduler such as Heun takes
two per step of ``num_inference_steps``):

- ``step=K``: the latent after K steps (``K = 1 .. steps - 1``, and ``K = steps`` when a VAE
  decodes it). ``d`` runs K steps, ``g`` the remaining ones and the decoder.
- ``BLOCK@step=K``: the output of a block of the denoiser in step K (0-based): ``mid_block``,
  ``up_blocks.1``, ``transformer_blocks.3``, ``single_transformer_blocks.0``, ``norm_out``, any
  unit of :func:`regprim.generators.stages.units`. Under guidance the feature holds the block's
  output of both passes (unconditional first) on the channel axis; a transformer's image tokens
  are laid out on their patch grid ``(dim, h, w)``.

What else reaches ``g`` around a cut: inside a step, the step's input latent and the outputs of
the blocks before the cut that later blocks consume (a U-Net's skip tensors); after a step of a
multistep or second-order scheduler (DPM-Solver, UniPC, DEIS, PNDM, Heun, ...), its history
(the model outputs and samples of earlier steps). ``skips="hold"`` holds them at the target's
values (computed once per code and replayed; ``g`` then sees the code and a run says so);
``skips="carry"`` carries them in the feature, one flat vector: a true cut. A one-step model has
no latent between steps: its default cut is the middle block with everything carried.

The scheduler must be deterministic: at construction each of its steps is run twice from one
state with two random-number states (the scheduler alone, on a stand-in sample), and one that
draws noise is refused with the fix. :meth:`DiffusionSplit.check_split` compares ``g(d(z))``
with the folder's own pipeline on the target's code (``regprim explain`` calls it before the
baseline). :mod:`regprim.generators.vae` cuts a VAE's decoder alone.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from regprim.generators.base import CodeSampler, SplitGenerator
from regprim.generators.families import Conditioning, Family, Prompt, quiet
from regprim.generators.stages import Stages, pack_state, units, unpack_state

SKIPS = ("hold", "carry")
EXACT = 1e-4  # the largest error of g(d(z)) against the folder's own pipeline, relative


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
        f"step=K with K in {list(latent_steps)} (the latent after K of {steps} denoiser "
        f"steps), or BLOCK@step=K with K in 0..{steps - 1} and BLOCK one of {blocks}"
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


# -- the scheduler's state -------------------------------------------------------------------
StateKey = tuple[str, int | None]


def clone_scheduler(scheduler: Any) -> Any:
    """A copy whose steps do not change ``scheduler``: its attributes, lists and tensors
    copied (a scheduler may add to a tensor in place, PNDM's Runge-Kutta steps do), tensors
    by ``clone`` (differentiable, where ``deepcopy`` refuses a tensor that carries
    gradients)."""

    def copied(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.clone()
        if isinstance(value, list):
            return [copied(v) for v in value]
        return value

    twin = copy.copy(scheduler)
    twin.__dict__ = {k: copied(v) for k, v in scheduler.__dict__.items()}
    return twin


def state_keys(scheduler: Any, shape: tuple[int, ...]) -> list[StateKey]:
    """Where the scheduler holds sample-shaped tensors (its history): ``(attribute, index)``,
    index None for a tensor attribute, else its position in a list attribute."""
    keys: list[StateKey] = []
    for name, value in sorted(vars(scheduler).items()):
        if isinstance(value, Tensor) and tuple(value.shape[1:]) == shape:
            keys.append((name, None))
        elif isinstance(value, list):
            keys += [
                (name, i)
                for i, v in enumerate(value)
                if isinstance(v, Tensor) and tuple(v.shape[1:]) == shape
            ]
    return keys


def get_state(scheduler: Any, keys: list[StateKey]) -> list[Tensor]:
    return [getattr(scheduler, n) if i is None else getattr(scheduler, n)[i] for n, i in keys]


def set_state(scheduler: Any, keys: list[StateKey], values: list[Tensor]) -> None:
    for (name, i), value in zip(keys, values, strict=True):
        if i is None:
            setattr(scheduler, name, value)
        else:
            getattr(scheduler, name)[i] = value


@dataclass
class Profile:
    """The scheduler alone, run through every step on a stand-in sample: which steps draw
    noise, whether it holds history after each number of steps, and its state there."""

    noisy: list[int]
    states: list[Any]  # the scheduler after k steps, k = 0 .. iterations
    history: list[list[StateKey]]  # the sample-shaped tensors it holds after k steps


@dataclass
class Prefix:
    """What precedes the cut for one code (computed once, replayed by every ``g``)."""

    x: Tensor  # the sampler's latent entering step k (packed)
    scheduler: Any  # the scheduler after k steps
    labels: Tensor | None
    out: Any = None  # the cut block's output (block cuts)
    calls: list | None = None  # the unit calls before it


class DiffusionSplit(SplitGenerator):
    """A diffusers denoiser and scheduler sampled in ``steps`` steps, cut at ``layer``.

    Args:
        denoiser: a diffusers U-Net or transformer (called ``denoiser(x, timestep=t, **kw)``).
        scheduler: a deterministic diffusers scheduler (copied; set for ``steps``).
        steps: the pipeline's ``num_inference_steps`` (1: a one-step model).
        layer: the cut (module docstring); None: the default (:meth:`default_cut`).
        vae: an ``AutoencoderKL`` whose decoder turns the final latent into the image.
        family: the pipeline family's pieces (:mod:`regprim.generators.families`); None: the
            diffusers API's standard loop (:class:`~regprim.generators.families.Family`).
        conditioning: the denoiser's fixed inputs (prompt embeddings, guidance); None: none,
            or, with ``guidance`` above 1 and ``null_class``, class guidance.
        guidance: classifier-free guidance scale without ``conditioning`` (class labels).
        num_classes: classes of a class-conditional denoiser (0: unconditional).
        null_class: the class label of the unconditional pass under guidance (DiT: the number
            of classes).
        size: the image size ``(H, W)`` (default: the pipeline's).
        gradient_checkpointing: recompute each remaining step in the backward pass instead of
            keeping its activations (less memory, about one more forward per step).
        skips: what reaches ``g`` around the cut besides the feature (module docstring):
            ``hold`` (default for several steps) or ``carry`` (default for one step).
        prompt: the prompt the conditioning was encoded from (for the pipeline check).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler: Any,
        steps: int,
        layer: str | None = None,
        *,
        vae: nn.Module | None = None,
        family: Family | None = None,
        conditioning: Conditioning | None = None,
        guidance: float = 1.0,
        num_classes: int = 0,
        null_class: int | None = None,
        size: tuple[int, int] | None = None,
        gradient_checkpointing: bool = False,
        skips: str | None = None,
        prompt: Prompt | None = None,
        name: str = "diffusion",
        class_names: tuple[str, ...] = (),
    ) -> None:
        if steps < 1:
            msg = f"steps={steps} must be at least 1"
            raise ValueError(msg)
        self.denoiser, self.scheduler, self.steps, self.vae = denoiser, scheduler, steps, vae
        self.family = family or Family(denoiser, vae)
        if conditioning is None:
            conditioning = Conditioning(uncond={} if guidance > 1 else None, guidance=guidance)
        self.cond, self.prompt = conditioning, prompt or Prompt()
        self.num_classes, self.null_class = num_classes, null_class
        self.gradient_checkpointing = gradient_checkpointing
        self._check_guidance()
        self.size = tuple(size) if size else self.family.default_size()
        self.latent_shape = self.family.latent_shape(self.size)  # type: ignore[arg-type]
        self.template = clone_scheduler(scheduler)
        with quiet(), refused(scheduler, "set for this pipeline"):
            self.family.set_timesteps(self.template, steps, self.latent_shape)
            self.timesteps = self.template.timesteps
            self.iterations = len(self.timesteps)
            self.profile = self._profile()
        self._refuse_noise()
        self.blocks = [b for b in units(denoiser) if b not in self.family.shared]
        self.latent_steps = range(1, self.iterations + (vae is not None))
        layers = [f"step={k}" for k in self.latent_steps] + [
            f"{b}@step={k}" for k in range(self.iterations) for b in self.blocks
        ]
        self.skips = skips or ("carry" if self.iterations == 1 else "hold")
        if self.skips not in SKIPS:
            msg = f"skips={self.skips!r} is not one of {list(SKIPS)}"
            raise ValueError(msg)
        layer = layer or self.default_cut()
        self.block, self.k = parse_cut(layer, self.iterations, self.latent_steps, self.blocks)
        self.stages = Stages(denoiser, self.block) if self.block else None
        self.history = self.profile.history[self.k] if self.k < self.iterations else []
        self._prefix: tuple[Tensor, Prefix] | None = None
        self.checked: dict[str, Any] = {}
        held = self.skips == "hold" and (bool(self.block) or bool(self.history))
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
        if self.cond.uncond is not None and not self.cond.uncond and self.null_class is None:
            msg = (
                f"guidance={self.cond.guidance} needs an unconditional pass: give null_class (a "
                "class label for 'no class') or a conditioning with an unconditional pass"
            )
            raise ValueError(msg)

    # -- the scheduler, alone ---------------------------------------------------------------
    def _stand_in(self) -> Tensor:
        rng = torch.Generator().manual_seed(0)
        return self.family.pack(torch.randn(1, *self.latent_shape, generator=rng))

    def _step_kwargs(self, scheduler: Any) -> dict[str, Any]:
        takes = inspect.signature(scheduler.step).parameters
        return {"eta": 0.0} if self.family.passes_eta and "eta" in takes else {}

    def _profile(self) -> Profile:
        """Every step of the scheduler on a stand-in sample and model output, each run twice
        from the same state under two random-number states (module docstring)."""
        sched = clone_scheduler(self.template)
        x = self._stand_in()
        shape = tuple(x.shape[1:])
        rng = torch.Generator().manual_seed(1)
        noisy: list[int] = []
        states, history = [clone_scheduler(sched)], [state_keys(sched, shape)]
        with torch.random.fork_rng(devices=[]):
            for i, t in enumerate(self.timesteps):
                out = torch.randn(x.shape, generator=rng)
                results = []
                for seed in (1, 2):
                    twin = clone_scheduler(sched)
                    torch.manual_seed(seed)
                    self.family.model_input(twin, x, t)
                    results.append(
                        (
                            twin.step(out, t, x, **self._step_kwargs(twin), return_dict=False)[0],
                            twin,
                        )
                    )
                if not torch.equal(results[0][0], results[1][0]):
                    noisy.append(i)
                x, sched = results[0]
                states.append(clone_scheduler(sched))
                history.append(state_keys(sched, shape))
        return Profile(noisy, states, history)

    def _refuse_noise(self) -> None:
        if not self.profile.noisy:
            return
        name = type(self.scheduler).__name__
        msg = (
            f"{name} draws noise in step(s) {self.profile.noisy} of this {self.iterations}-step "
            f"sampler; g must give one image per feature: use a deterministic sampler, e.g. "
            f"?sampler={deterministic_twin(name)} (docs/models.md, 'Samplers')"
        )
        raise ValueError(msg)

    # -- cuts ---------------------------------------------------------------------------------
    def default_cut(self) -> str:
        """The latent nearest the middle of the sampler after which the scheduler holds no
        history (else the middle); one step: the middle block of the denoiser."""
        if self.iterations == 1:
            return f"{middle_block(list(units(self.denoiser)))}@step=0"
        half = self.iterations // 2
        free = [k for k in range(1, self.iterations) if not self.profile.history[k]]
        return f"step={min(free, key=lambda k: (abs(k - half), k)) if free else half}"

    def _around_cut(self) -> str:
        parts = []
        if self.block:
            parts.append(
                f"a cut inside step {self.k} ({self.block}): the step's input latent, and the "
                "outputs of the blocks before it that later blocks consume (skip tensors), "
                "reach g around the cut"
            )
        if self.history:
            name = type(self.scheduler).__name__
            parts.append(
                f"{name} carries a history into step {self.k} (model outputs or samples of "
                "earlier steps), which reaches g around the cut"
            )
        return "; ".join(parts) + (
            "; they are held at the target's values, so g depends on the code "
            "(?skips=carry carries them in the feature instead)"
        )

    def modules(self) -> list[nn.Module]:
        return [self.denoiser] + ([self.vae] if self.vae is not None else [])

    def to(self, device: str | torch.device) -> DiffusionSplit:
        super().to(device)
        self.cond = self.cond.to(self.device)
        return self

    def cut_at(self, layer: str) -> DiffusionSplit:
        return (
            DiffusionSplit(
                self.denoiser,
                self.scheduler,
                self.steps,
                layer,
                vae=self.vae,
                family=self.family,
                conditioning=self.cond,
                num_classes=self.num_classes,
                null_class=self.null_class,
                size=self.size,  # type: ignore[arg-type]
                gradient_checkpointing=self.gradient_checkpointing,
                skips=self.skips,
                prompt=self.prompt,
                name=self.name,
                class_names=self.class_names,
            )
            .freeze()
            .to(self.device)
        )

    def cost(self) -> str:
        """What one evaluation of ``g`` runs (``--dry-run`` prints it)."""
        calls = self.iterations - self.k - (1 if self.block else 0)
        what = f"{calls} of {self.iterations} denoiser steps"
        if self.block:
            what = f"the rest of step {self.k} after {self.block}, then {what}"
        decoder = ", then the VAE decoder" if self.vae is not None else ""
        return f"g runs {what} ({self.cond.passes} denoiser pass(es) per step){decoder}"

    def info(self) -> dict[str, Any]:
        """What a run records about the sampler (config.json's ``model_info``)."""
        return {
            "family": self.family.name,
            "pipeline": type(self.family.pipe).__name__ if self.family.pipe is not None else None,
            "scheduler": type(self.scheduler).__name__,
            "steps": self.steps,
            "denoiser_steps": self.iterations,
            "image_size": list(self.size),
            "guidance": self.cond.guidance if self.cond.uncond is not None else 1.0,
            "skips": self.skips,
            "held_around_cut": bool(self.around_cut),
        } | self.cond.info

    # -- the sampler, in pieces -----------------------------------------------------------------
    def _split_code(self, code: Tensor) -> tuple[Tensor, Tensor | None]:
        """Codes -> starting latents (packed, scaled as the pipeline scales its noise) and the
        class labels (or None)."""
        numel = math.prod(self.latent_shape)
        noise = code[:, :numel].reshape(-1, *self.latent_shape)
        labels = code[:, numel:].argmax(1) if self.num_classes else None
        sigma = getattr(self.template, "init_noise_sigma", 1.0) if self.family.init_sigma else 1.0
        return self.family.pack(noise * sigma), labels

    def _call(self, sched: Any, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The denoiser on ``x`` at ``t`` (the unconditional rows first under guidance): its raw
        output."""
        x_in = self.family.model_input(sched, x, t)
        if self.cond.passes == 2:
            x_in = torch.cat([x_in, x_in])
        extra = {}
        if labels is not None:
            extra["class_labels"] = labels
            extra["null_class_labels"] = torch.full_like(labels, self.null_class or 0)
        kwargs = self.cond.kwargs(len(x), extra)
        timestep = self.family.timestep(t, len(x_in), x.dtype).to(x.device)
        out = self.denoiser(x_in, timestep=timestep, **kwargs)
        return out.sample if hasattr(out, "sample") else out[0]

    def _update(self, sched: Any, out: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """The scheduler's step from the raw output (guidance combined, variance dropped)."""
        if self.cond.passes == 2:
            uncond, cond = out.chunk(2)
            out = uncond + self.cond.guidance * (cond - uncond)
        pred = self.family.prediction(out, x)
        return sched.step(pred, t, x, **self._step_kwargs(sched), return_dict=False)[0]

    def _run(
        self, x: Tensor, sched: Any, start: int, stop: int, labels: Tensor | None
    ) -> tuple[Tensor, Any]:
        """Steps ``start .. stop - 1`` from ``x`` with ``sched`` (its state after ``start``
        steps): the latent and the scheduler after them."""
        with quiet():  # a scheduler's notes on every step are not the user's business
            return self._steps(x, sched, start, stop, labels)

    def _steps(
        self, x: Tensor, sched: Any, start: int, stop: int, labels: Tensor | None
    ) -> tuple[Tensor, Any]:
        for k in range(start, stop):
            t = self.timesteps[k]
            if not (self.gradient_checkpointing and torch.is_grad_enabled()):
                x = self._update(sched, self._call(sched, x, t, labels), t, x)
                continue
            before, after = sched, {}

            def step(x: Tensor, t: Tensor = t, before: Any = before, after: dict = after) -> Tensor:
                s = clone_scheduler(before)  # the recomputation in backward starts here again
                after["s"] = s
                return self._update(s, self._call(s, x, t, labels), t, x)

            x = checkpoint(step, x, use_reentrant=False)
            sched = after["s"]
        return x, sched

    def _decode(self, x: Tensor) -> Tensor:
        return self.family.decode(x, self.latent_shape)

    def sample(self, code: Tensor) -> Tensor:
        """The sampler, uncut: images ``(B, C, H, W)`` of codes."""
        x, labels = self._split_code(code)
        x, _ = self._run(x, clone_scheduler(self.template), 0, self.iterations, labels)
        return self._decode(x)

    # -- the split ----------------------------------------------------------------------------
    def _token_grid(self) -> tuple[int, int]:
        p = self.family.patch()
        return self.latent_shape[1] // p, self.latent_shape[2] // p

    def _pick(self, output: object) -> None:
        """Which entry of a block's tuple output is the feature: the image tokens of a
        transformer block (the last entry with one token per patch), else the first."""
        if (
            self.stages is None
            or isinstance(output, Tensor)
            or self.stages.output_index is not None
        ):
            return
        tokens = math.prod(self._token_grid())
        found = [
            i
            for i, v in enumerate(output)  # type: ignore[arg-type]
            if isinstance(v, Tensor) and v.dim() == 3 and v.shape[1] == tokens
        ]
        self.stages.output_index = found[-1] if found else 0

    def _pack(self, raw: Tensor, batch: int) -> Tensor:
        """A block's output -> the feature ``(B, C, h, w)``: tokens on their patch grid, the
        two guided passes on the channel axis."""
        if len(raw) != self.cond.passes * batch:
            msg = (
                f"the output of {self.block} {tuple(raw.shape)} is not one row per image and "
                f"guided pass ({self.cond.passes * batch}): no feature of an image; cut at "
                "another block (regprim models --model DIR lists them)"
            )
            raise ValueError(msg)
        h, w = self._token_grid()
        if raw.dim() == 3 and raw.shape[1] == h * w:  # (N, tokens, dim): image tokens
            raw = raw.transpose(1, 2).reshape(len(raw), raw.shape[2], h, w)
        if self.cond.passes == 2:
            raw = raw.reshape(2, batch, *raw.shape[1:]).transpose(0, 1)
            raw = raw.reshape(batch, -1, *raw.shape[3:])
        return raw

    def _unpack(self, f: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`_pack`, shaped like the block's output ``like``."""
        batch = len(f)
        if self.cond.passes == 2:
            f = (
                f.reshape(batch, 2, -1, *f.shape[2:])
                .transpose(0, 1)
                .reshape(2 * batch, -1, *f.shape[2:])
            )
        if like.dim() == 3 and like.shape[1] == math.prod(self._token_grid()):
            f = f.flatten(2).transpose(1, 2)
        return f

    def _capture(self, code: Tensor) -> Prefix:
        """Steps before the cut, then step ``k`` up to the cut block (block cuts)."""
        x, labels = self._split_code(code)
        x, sched = self._run(x, clone_scheduler(self.template), 0, self.k, labels)
        if not self.block:
            return Prefix(x, sched, labels)
        t = self.timesteps[self.k]
        assert self.stages is not None
        probe = clone_scheduler(sched)  # scale_model_input may advance a scheduler's state
        out, calls = self.stages.capture(lambda: self._call(probe, x, t, labels))
        self._pick(out)
        return Prefix(x, sched, labels, out, calls)

    def _carried(self, p: Prefix) -> list[Any]:
        """What a true cut carries, in order: the latent, the scheduler's history, the unit
        calls before the block, the block's output."""
        calls = [o for _, o in p.calls] if p.calls is not None else []
        out = [p.out] if self.block else []
        return [p.x, *get_state(p.scheduler, self.history), *calls, *out]

    def feature_dims(self) -> int | None:
        """A carried state is flat; a latent is ``(C, h, w)``; a block's output: unknown."""
        if self.skips == "carry" and (self.block or self.history):
            return 1
        return None if self.block else len(self.latent_shape)

    def d(self, code: Tensor) -> Tensor:
        p = self._capture(code)
        if self.skips == "carry" and (self.block or self.history):
            return pack_state(self._carried(p), len(code))
        if not self.block:
            return self.family.unpack(p.x, self.latent_shape)
        assert self.stages is not None
        return self._pack(self.stages.feature_of(p.out), len(code))

    def _held(self, code: Tensor) -> Prefix:
        """What precedes the cut for one code, computed once and kept for the next call."""
        if self._prefix is not None and torch.equal(self._prefix[0], code):
            return self._prefix[1]
        with torch.no_grad():
            held = self._capture(code)
        self._prefix = (code.clone(), held)
        return held

    def _state(self, sched: Any, batch: int) -> Any:
        """A copy of ``sched`` (after k steps) for ``batch`` items."""
        sched = clone_scheduler(sched)
        values = get_state(sched, self.history)
        set_state(sched, self.history, [v.expand(batch, *v.shape[1:]) for v in values])
        return sched

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        batch = len(f)
        around = bool(self.block or self.history)
        held = self.skips == "hold" and around
        if held and len(code) > 1 and not bool((code == code[:1]).all()):
            return torch.cat([self.g(f[i : i + 1], code[i : i + 1]) for i in range(batch)])
        labels = self._split_code(code[:1])[1]
        labels = None if labels is None else labels.expand(batch)
        if self.skips == "carry" and around:  # everything that crosses the cut comes from f
            like = self._held(code[:1])  # for the shapes
            x, *rest = unpack_state(f, self._carried(like), 1)
            sched = clone_scheduler(self.profile.states[self.k])
            set_state(sched, self.history, rest[: len(self.history)])
            rest = rest[len(self.history) :]
            if self.block:
                calls = [(n, o) for (n, _), o in zip(like.calls or [], rest[:-1], strict=True)]
                out, raw, repeat = rest[-1], self.stages.feature_of(rest[-1]), 1  # type: ignore[union-attr]
        elif held:
            p = self._held(code[:1])
            sched = self._state(p.scheduler, batch)
            x = p.x.expand(batch, *p.x.shape[1:]) if self.block else self.family.pack(f)
            if self.block:
                calls, out, repeat = p.calls, p.out, batch
                raw = self._unpack(f, self.stages.feature_of(p.out))  # type: ignore[union-attr]
        else:  # a true cut between steps: the scheduler's state there is the same for all codes
            x, sched = self.family.pack(f), clone_scheduler(self.profile.states[self.k])
        start = self.k
        if self.block:  # the rest of step k: replayed units, the feature at the cut, the update
            assert self.stages is not None
            t, start = self.timesteps[self.k], self.k + 1
            result = self.stages.resume(
                lambda: self._call(sched, x, t, labels), calls, out, raw, self.cond.passes, repeat
            )
            x = self._update(sched, result, t, x)
        x, _ = self._run(x, sched, start, self.iterations, labels)
        return self._decode(x)

    # -- the check against the folder's own pipeline --------------------------------------------
    @torch.no_grad()
    def check_split(
        self, code: Tensor, f: Tensor | None = None, x: Tensor | None = None
    ) -> dict[str, Any]:
        """``g(f)`` twice and ``g(d(z))`` against the folder's own pipeline (or, with no
        pipeline to call, the uncut sampler) on ``code`` (``f = d(code)`` and ``x = g(f)``
        when already computed); a failure is an error with the measured numbers and the fix.
        Returns what a run records."""
        f = self.d(code) if f is None else f
        first = self.g(f, code) if x is None else x
        again = self.g(f, code)
        scale = float(first.abs().max()) or 1.0
        repeat = float((first - again).abs().max()) / scale
        if repeat > 1e-6:
            msg = (
                f"g gives two images for one feature (they differ by {repeat:.2g} of the image's "
                f"largest value): {type(self.scheduler).__name__} or the model is not "
                "deterministic; use a deterministic sampler (?sampler=ddim)"
            )
            raise ValueError(msg)
        reference = self._reference(code)
        if reference is None:
            want, against = self.sample(code), "the uncut sampler"
            mine = first
        else:
            want, against = reference, type(self.family.pipe).__name__
            mine = (first.float() / 2 + 0.5).clamp(0, 1).to(want.device)
            want = want.to(mine.device)
        error = float((mine - want).abs().max()) / (float(want.abs().max()) or 1.0)
        if error > EXACT:
            msg = (
                f"g(d(z)) differs from {against} by {error:.2g} of the image's largest value "
                f"(at most {EXACT:g} is exact) with {type(self.scheduler).__name__} at cut "
                f"{self.layer}; try ?sampler=ddim or another step count, or wrap the model "
                "yourself (--model file.py:build, docs/models.md)"
            )
            raise ValueError(msg)
        self.checked = {"against": against, "max_rel_error": error, "g_repeat_rel_diff": repeat}
        return self.checked

    def _reference(self, code: Tensor) -> Tensor | None:
        """The folder's own pipeline's image of ``code`` in [0, 1]; None without a pipeline
        whose loop is this one (a bare folder; DDPM/DDIM pipelines, which scale neither noise
        nor input, with a scheduler that does)."""
        pipe = self.family.pipe
        if pipe is None:
            return None
        if self.family.name == "unet" and type(self.template).__name__ not in (
            "DDIMScheduler",
            "DDPMScheduler",
        ):
            return None
        numel = math.prod(self.latent_shape)
        noise = code[:, :numel].reshape(-1, *self.latent_shape)
        labels = code[:, numel:].argmax(1).tolist() if self.num_classes else None
        pipe.scheduler = clone_scheduler(self.scheduler)
        with quiet(), refused(self.scheduler, f"run by the folder's own {type(pipe).__name__}"):
            return self.family.reference(
                noise,
                self.steps,
                self.prompt,
                self._guidance(),
                self.size,
                labels,  # type: ignore[arg-type]
            )

    def _guidance(self) -> float:
        """The ``guidance_scale`` the pipeline is called with."""
        embedded = self.cond.cond.get("guidance")
        if embedded is not None:
            return float(embedded.reshape(-1)[0])
        return self.cond.guidance if self.cond.uncond is not None else 1.0


@contextlib.contextmanager
def refused(scheduler: Any, what: str) -> Iterator[None]:
    """A scheduler that fails where the pipeline's loop uses it is refused with the fix."""
    try:
        yield
    except Exception as err:  # a scheduler's own failure, said as the user's to fix
        name = type(scheduler).__name__
        msg = (
            f"{name} cannot be {what} ({type(err).__name__}: {err}); use a scheduler the "
            f"pipeline's loop can step, e.g. ?sampler={deterministic_twin(name)} "
            "(docs/models.md, 'Samplers')"
        )
        raise ValueError(msg) from err


def middle_block(blocks: list[str]) -> str:
    """A denoiser's middle block: ``mid_block``, else the middle of its numbered blocks."""
    if "mid_block" in blocks:
        return "mid_block"
    numbered = [b for b in blocks if b.rpartition(".")[2].isdigit()]
    return numbered[len(numbered) // 2] if numbered else blocks[len(blocks) // 2]


TWINS = {
    "DDPMScheduler": "ddim",
    "EulerAncestralDiscreteScheduler": "euler",
    "KDPM2AncestralDiscreteScheduler": "kdpm2",
    "DPMSolverSDEScheduler": "dpm",
    "LCMScheduler": "ddim (or ?steps=1, where LCM draws no noise)",
}


def deterministic_twin(name: str) -> str:
    """The ``?sampler=`` that samples a stochastic scheduler's schedule deterministically."""
    return TWINS.get(name, "ddim")
