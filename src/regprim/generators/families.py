"""How each diffusers pipeline family samples: its ``__call__`` taken apart into the pieces
that :class:`regprim.generators.diffusion.DiffusionSplit` runs on either side of a cut.

A family is the pipeline class a folder's ``model_index.json`` names (``FAMILIES``), or, for a
folder that names no pipeline of its own, its denoiser's class. Each one states what its
pipeline does and the others do not: how the prompt is encoded (the pipeline's own
``encode_prompt``: one CLIP encoder for Stable Diffusion, two and pooled embeddings for SDXL,
CLIP-L, CLIP-G and T5 for SD3, CLIP pooled and T5 for FLUX, T5 for PixArt), which extra inputs
the denoiser takes (SDXL's ``text_embeds`` and ``time_ids``, FLUX's image and text ids and
guidance embedding), how the timesteps are set (SD3 and FLUX: flow-matching sigmas and the
resolution shift ``mu``), whether the starting noise is scaled and the model input too, how
the timestep reaches the denoiser, how latents are laid out (FLUX packs 2x2 patches into
tokens) and how they are decoded. Everything else is one loop, written once in
:mod:`regprim.generators.diffusion`: the tests compare it with each folder's own pipeline
called with the same prompt, guidance, steps and initial noise (``tests/test_families.py``).

``guidance`` means what the pipeline's ``guidance_scale`` means: classifier-free guidance (the
unconditional pass batched first) when it is above 1 for every family but FLUX, whose
``guidance_scale`` is the distilled guidance embedding of a ``guidance_embeds`` transformer
(FLUX's true classifier-free guidance is ``true_cfg`` with a negative prompt).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class Conditioning:
    """What the denoiser is called with besides the latent and the timestep, held fixed.

    Attributes:
        cond: keyword arguments of the conditional pass, each tensor for one item (batch 1);
            a dict value (SDXL's ``added_cond_kwargs``) holds such tensors in turn.
        uncond: those of the unconditional pass under classifier-free guidance (same keys),
            else None.
        shared: keyword arguments passed as they are (FLUX's ``txt_ids`` and ``img_ids``).
        guidance: the classifier-free guidance scale (used only with ``uncond``).
        info: what a run records about it (prompt text, encoders).
    """

    cond: dict[str, Any] = field(default_factory=dict)
    uncond: dict[str, Any] | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    guidance: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def passes(self) -> int:
        """Denoiser passes per step and item: 2 under classifier-free guidance."""
        return 2 if self.uncond is not None else 1

    def kwargs(self, batch: int, extra: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """The denoiser's keyword arguments for ``batch`` items (``2 * batch`` rows under
        guidance, the unconditional ones first); ``extra`` adds per-item tensors of the
        conditional pass and, after a ``null_`` prefix, of the unconditional one."""
        extra = extra or {}
        cond = self.cond | {k: v for k, v in extra.items() if not k.startswith("null_")}
        out = {k: _rows(v, batch) for k, v in cond.items()}
        if self.uncond is not None:
            null = self.uncond | {k[5:]: v for k, v in extra.items() if k.startswith("null_")}
            out = {k: _cat(_rows(null[k], batch), v) for k, v in out.items()}
        return out | self.shared

    def to(self, device: torch.device) -> Conditioning:
        move = _mapped(lambda t: t.to(device))
        uncond = None if self.uncond is None else move(self.uncond)
        return Conditioning(move(self.cond), uncond, move(self.shared), self.guidance, self.info)


def _mapped(fn):
    def apply(value: Any) -> Any:
        if isinstance(value, Tensor):
            return fn(value)
        if isinstance(value, dict):
            return {k: apply(v) for k, v in value.items()}
        return value

    return apply


def _rows(value: Any, batch: int) -> Any:
    """A one-item tensor (or a dict of them) for ``batch`` items."""
    if isinstance(value, dict):
        return {k: _rows(v, batch) for k, v in value.items()}
    if isinstance(value, Tensor) and value.dim() and value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    return value


def _cat(first: Any, second: Any) -> Any:
    if isinstance(first, dict):
        return {k: _cat(first[k], second[k]) for k in first}
    if isinstance(first, Tensor):
        return torch.cat([first, second])
    return second


@dataclass
class Prompt:
    """The text a run is conditioned on, or embeddings computed elsewhere.

    Attributes:
        text: the prompt (the empty prompt when none is given, as diffusers encodes it).
        negative: the negative prompt of the unconditional pass (None: the pipeline's own
            default, the empty prompt or SDXL's zeros).
        embeds: precomputed embeddings by diffusers' names (``prompt_embeds``,
            ``negative_prompt_embeds``, ``pooled_prompt_embeds``, ...), used instead of the
            text encoders.
        true_cfg: FLUX's true classifier-free guidance scale (with a negative prompt).
    """

    text: str = ""
    negative: str | None = None
    embeds: dict[str, Tensor] = field(default_factory=dict)
    true_cfg: float = 1.0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """diffusers and transformers say only errors while a folder loads and a sampler is set
    (progress bars, deprecation notes and notes about optional packages are not the user's
    business here)."""
    import diffusers

    logs = [diffusers.utils.logging]
    with contextlib.suppress(ImportError):  # pixel and class folders need no text encoder
        import transformers

        logs.append(transformers.logging)
    before = [log.get_verbosity() for log in logs]
    for log in logs:
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, level in zip(logs, before, strict=True):
            log.set_verbosity(level)
            log.enable_progress_bar()


class Family:
    """The generic loop of a denoiser called as ``denoiser(x, timestep=t, **kwargs)``: starting
    noise times ``init_noise_sigma``, ``scale_model_input``, then ``scheduler.step`` (the
    diffusers API's standard loop, what pixel U-Net pipelines and the bare layouts run).

    Subclasses set what their pipeline does differently (class attributes) and override the
    methods where it computes something of its own.
    """

    name: ClassVar[str] = "unet"
    pipelines: ClassVar[tuple[str, ...]] = ("DDPMPipeline", "DDIMPipeline")
    denoisers: ClassVar[tuple[str, ...]] = ("UNet2DModel",)
    init_sigma: ClassVar[bool] = True  # the starting noise times init_noise_sigma
    passes_eta: ClassVar[bool] = True  # eta = 0 to a scheduler step that takes it
    text: ClassVar[bool] = False  # conditioned on a prompt
    # units whose output is not one row per image (shared rotary embeddings, flattened size
    # ids): no feature of an image, so not cuts
    shared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, denoiser: nn.Module, vae: nn.Module | None, pipe: Any = None) -> None:
        self.denoiser, self.vae, self.pipe = denoiser, vae, pipe

    # -- sizes --------------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        """Image pixels per latent position (the pipelines' ``vae_scale_factor``)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def default_size(self) -> tuple[int, int]:
        """The image size the pipeline makes by default: ``(H, W)``."""
        size = self.denoiser.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return h * self.vae_scale, w * self.vae_scale

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """The latent of an image of ``size``, unpacked: ``(C, h, w)``."""
        return (
            self.denoiser.config.in_channels,
            size[0] // self.vae_scale,
            size[1] // self.vae_scale,
        )

    def classes(self) -> int:
        """Classes of a class-conditional denoiser (0: none)."""
        return int(self.denoiser.config.get("num_class_embeds") or 0)

    def patch(self) -> int:
        """Latent positions per transformer token along each axis (1 for a U-Net)."""
        return int(getattr(self.denoiser.config, "patch_size", None) or 1)

    # -- the loop's pieces --------------------------------------------------------------------
    def condition(self, prompt: Prompt, guidance: float, size: tuple[int, int]) -> Conditioning:
        """The fixed inputs of the denoiser (no text: nothing, or the classes, added per item
        by the split)."""
        return Conditioning(guidance=guidance)

    def timestep_kwargs(self, steps: int, latent: tuple[int, int, int]) -> dict[str, Any]:
        """Extra arguments of the pipeline's ``retrieve_timesteps`` (sigmas, ``mu``)."""
        return {}

    def set_timesteps(self, scheduler: Any, steps: int, latent: tuple[int, int, int]) -> None:
        """The scheduler set for ``steps`` as the pipeline sets it."""
        kwargs = self.timestep_kwargs(steps, latent)
        module = sys.modules[type(self.pipe).__module__] if self.pipe is not None else None
        retrieve = getattr(module, "retrieve_timesteps", None)
        if retrieve is not None:
            retrieve(scheduler, steps, None, **kwargs)
        else:
            scheduler.set_timesteps(steps, **kwargs)
        if self.begins_at_zero and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    begins_at_zero: ClassVar[bool] = False  # the pipeline calls scheduler.set_begin_index(0)

    def model_input(self, scheduler: Any, x: Tensor, t: Tensor) -> Tensor:
        if hasattr(scheduler, "scale_model_input"):
            return scheduler.scale_model_input(x, t)
        return x

    def timestep(self, t: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
        return t.expand(rows)

    def pack(self, latent: Tensor) -> Tensor:
        """``(B, C, h, w)`` latents in the layout the sampler steps (FLUX: tokens)."""
        return latent

    def unpack(self, x: Tensor, latent: tuple[int, int, int]) -> Tensor:
        return x

    def decode(self, x: Tensor, latent: tuple[int, int, int]) -> Tensor:
        """The image of the final latent (the VAE's decoder; the latent itself without one)."""
        if self.vae is None:
            return x
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
            z = x * std / cfg.scaling_factor + mean
        else:
            z = x / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return self.vae.decode(z).sample

    def prediction(self, out: Tensor, like: Tensor) -> Tensor:
        """The model output the scheduler steps with: a learned-variance half dropped."""
        if out.shape != like.shape and out.shape[1] == 2 * like.shape[1]:
            return out[:, : like.shape[1]]
        return out

    # -- the folder's own pipeline, for the exactness check -------------------------------------
    def reference_kwargs(self, prompt: Prompt, guidance: float, size: tuple[int, int]) -> dict:
        """The pipeline call's arguments besides steps and noise."""
        return {}

    @contextlib.contextmanager
    def noise(self, latents: Tensor) -> Iterator[dict[str, Any]]:
        """The pipeline's initial noise set to ``latents``: as its ``latents`` argument, or
        (pipelines that have none) by its module's ``randn_tensor`` answering them."""
        import inspect

        if "latents" in inspect.signature(self.pipe.__call__).parameters:
            yield {"latents": latents}
            return
        module = sys.modules[type(self.pipe).__module__]
        original = module.randn_tensor
        module.randn_tensor = lambda *_a, **_k: latents.clone()
        try:
            yield {}
        finally:
            module.randn_tensor = original

    def reference(
        self,
        noise: Tensor,
        steps: int,
        prompt: Prompt,
        guidance: float,
        size: tuple[int, int],
        class_labels: list[int] | None,
    ) -> Tensor:
        """The folder's own pipeline's images in [0, 1] ``(B, C, H, W)`` from the starting
        noise ``noise`` ``(B, C, h, w)`` (unscaled, as the code holds it)."""
        kwargs = self.reference_kwargs(prompt, guidance, size)
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        self.pipe.set_progress_bar_config(disable=True)
        with self.noise(self.pack(noise)) as given:
            out = self.pipe(num_inference_steps=steps, output_type="np", **kwargs, **given)
        images = out.images if hasattr(out, "images") else out[0]
        return torch.as_tensor(images).permute(0, 3, 1, 2).float()


class PixelFamily(Family):
    """DDPM/DDIM pipelines: their loop neither scales the noise nor the model input (the
    schedulers they run have ``init_noise_sigma = 1`` and no input scaling)."""

    def reference_kwargs(self, prompt, guidance, size):
        return {"batch_size": 1}


class DiTFamily(Family):
    """DiTPipeline: class labels (the label table's extra row is "no class"), noise used as
    drawn, guidance on the first latent channels (the same prediction)."""

    name = "dit"
    pipelines = ("DiTPipeline",)
    denoisers = ("DiTTransformer2DModel",)
    init_sigma = False
    passes_eta = False

    def classes(self) -> int:
        return int(self.denoiser.config.get("num_embeds_ada_norm") or 0)

    def reference_kwargs(self, prompt, guidance, size):
        return {"guidance_scale": guidance}


def _encode(pipe: Any, **kwargs: Any) -> Any:
    """``pipe.encode_prompt`` with the keyword arguments its signature takes."""
    import inspect

    params = inspect.signature(pipe.encode_prompt).parameters
    return pipe.encode_prompt(**{k: v for k, v in kwargs.items() if k in params})


def _text_info(pipe: Any, prompt: Prompt) -> dict[str, Any]:
    encoders = [
        k
        for k in ("text_encoder", "text_encoder_2", "text_encoder_3")
        if getattr(pipe, k, None) is not None
    ]
    return {
        "prompt": prompt.text,
        "negative_prompt": prompt.negative,
        "prompt_embeds": sorted(prompt.embeds),
        "text_encoders": {k: type(getattr(pipe, k)).__name__ for k in encoders},
    }


class StableDiffusionFamily(Family):
    """Stable Diffusion 1.x/2.x (and one-step SD-Turbo): one CLIP encoder; an LCM-distilled
    U-Net (``time_cond_proj_dim``) takes the guidance as an embedding instead of a second
    pass."""

    name = "sd"
    pipelines = ("StableDiffusionPipeline",)
    denoisers = ("UNet2DConditionModel",)
    text = True

    def cfg(self, guidance: float) -> bool:
        return guidance > 1 and self.denoiser.config.time_cond_proj_dim is None

    def embeds(self, prompt: Prompt, cfg: bool) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        """``(prompt_embeds, negative_prompt_embeds, extra inputs of each pass)``; a folder
        that names no pipeline of its own (no ``encode_prompt``) takes them from a file."""
        if not hasattr(self.pipe, "encode_prompt"):
            return prompt.embeds["prompt_embeds"], prompt.embeds.get("negative_prompt_embeds"), {}
        pe, npe = _encode(
            self.pipe,
            prompt=None if "prompt_embeds" in prompt.embeds else prompt.text,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=prompt.negative,
            **prompt.embeds,
        )
        return pe, npe if cfg else None, {}

    def condition(self, prompt, guidance, size):
        cfg = self.cfg(guidance)
        pe, npe, extra = self.embeds(prompt, cfg)
        cond = {"encoder_hidden_states": pe} | extra.get("cond", {})
        uncond = ({"encoder_hidden_states": npe} | extra.get("uncond", {})) if cfg else None
        proj = self.denoiser.config.time_cond_proj_dim
        if proj is not None:
            w = torch.tensor(guidance - 1).repeat(1)
            cond["timestep_cond"] = self.pipe.get_guidance_scale_embedding(w, embedding_dim=proj)
        return Conditioning(cond, uncond, {}, guidance, _text_info(self.pipe, prompt))

    def reference_kwargs(self, prompt, guidance, size):
        text = {} if "prompt_embeds" in prompt.embeds else {"prompt": prompt.text}
        return (
            text
            | dict(prompt.embeds)
            | {
                "negative_prompt": prompt.negative,
                "guidance_scale": guidance,
                "height": size[0],
                "width": size[1],
            }
        )


class SDXLFamily(StableDiffusionFamily):
    """SDXL: two CLIP encoders, pooled embeddings and the size conditions (``text_embeds``,
    ``time_ids``) as added conditions."""

    shared = ("add_time_proj",)  # the six size ids of every image, flattened

    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)
    begins_at_zero = True

    def embeds(self, prompt, cfg):
        pe, npe, ppe, nppe = _encode(
            self.pipe,
            prompt=None if "prompt_embeds" in prompt.embeds else prompt.text,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=prompt.negative,
            **prompt.embeds,
        )
        te2 = self.pipe.text_encoder_2
        dim = int(ppe.shape[-1]) if te2 is None else te2.config.projection_dim
        size = self._size
        ids = self.pipe._get_add_time_ids(
            size, (0, 0), size, dtype=pe.dtype, text_encoder_projection_dim=dim
        )
        extra = {"cond": {"added_cond_kwargs": {"text_embeds": ppe, "time_ids": ids}}}
        if cfg:
            extra["uncond"] = {"added_cond_kwargs": {"text_embeds": nppe, "time_ids": ids}}
        return pe, npe if cfg else None, extra

    def condition(self, prompt, guidance, size):
        self._size = tuple(size)
        return super().condition(prompt, guidance, size)


class SD3Family(Family):
    """SD3/3.5: MMDiT, flow matching (no noise or input scaling), CLIP-L, CLIP-G and
    optionally T5; pooled projections; the latents shifted before decoding."""

    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)
    denoisers = ("SD3Transformer2DModel",)
    init_sigma = False
    passes_eta = False
    text = True

    def default_size(self):
        return (self.pipe.default_sample_size * self.vae_scale,) * 2

    def timestep_kwargs(self, steps, latent):
        cfg = self.pipe.scheduler.config
        if not cfg.get("use_dynamic_shifting", None):
            return {}
        module = sys.modules[type(self.pipe).__module__]
        tokens = (latent[1] // self.patch()) * (latent[2] // self.patch())
        mu = module.calculate_shift(
            tokens,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.16),
        )
        return {"mu": mu}

    def model_input(self, scheduler, x, t):
        return x

    def condition(self, prompt, guidance, size):
        cfg = guidance > 1
        pe, npe, ppe, nppe = _encode(
            self.pipe,
            prompt=None if "prompt_embeds" in prompt.embeds else prompt.text,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=prompt.negative,
            do_classifier_free_guidance=cfg,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            **prompt.embeds,
        )
        cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
        uncond = {"encoder_hidden_states": npe, "pooled_projections": nppe} if cfg else None
        return Conditioning(cond, uncond, {}, guidance, _text_info(self.pipe, prompt))

    def reference_kwargs(self, prompt, guidance, size):
        return StableDiffusionFamily.reference_kwargs(self, prompt, guidance, size)


class FluxFamily(Family):
    """FLUX.1: latents packed as 2x2 tokens with their ids, CLIP pooled + T5, the guidance
    embedding (``guidance_embeds``), flow-matching sigmas shifted by the image's token count;
    true classifier-free guidance only with a negative prompt and ``true_cfg`` above 1."""

    shared = ("pos_embed",)  # rotary embeddings of the token ids, one for the whole batch

    name = "flux"
    pipelines = ("FluxPipeline",)
    denoisers = ("FluxTransformer2DModel",)
    init_sigma = False
    passes_eta = False
    begins_at_zero = True
    text = True

    def default_size(self):
        return (self.pipe.default_sample_size * self.vae_scale,) * 2

    def latent_shape(self, size):
        h = 2 * (size[0] // (self.vae_scale * 2))
        w = 2 * (size[1] // (self.vae_scale * 2))
        return (self.denoiser.config.in_channels // 4, h, w)

    def patch(self):
        return 2

    def timestep_kwargs(self, steps, latent):
        import numpy as np

        cfg = self.pipe.scheduler.config
        sigmas = None if cfg.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        module = sys.modules[type(self.pipe).__module__]
        mu = module.calculate_shift(
            (latent[1] // 2) * (latent[2] // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        return {"sigmas": sigmas, "mu": mu}

    def model_input(self, scheduler, x, t):
        return x

    def timestep(self, t, rows, dtype):
        return t.expand(rows).to(dtype) / 1000

    def pack(self, latent):
        b, c, h, w = latent.shape
        x = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def unpack(self, x, latent):
        c, h, w = latent
        b = x.shape[0]
        x = x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)

    def decode(self, x, latent):
        return super().decode(self.unpack(x, latent), latent)

    def condition(self, prompt, guidance, size):
        def encode(text: str | None, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
            given = {
                k.removeprefix(prefix): v
                for k, v in prompt.embeds.items()
                if k.startswith(prefix) and (prefix or not k.startswith("negative_"))
            }
            return _encode(
                self.pipe,
                prompt=None if "prompt_embeds" in given else text,
                device=torch.device("cpu"),
                num_images_per_prompt=1,
                **given,
            )

        pe, ppe, text_ids = encode(prompt.text, "")
        cond: dict[str, Any] = {"encoder_hidden_states": pe, "pooled_projections": ppe}
        if self.denoiser.config.guidance_embeds:
            cond["guidance"] = torch.full([1], guidance, dtype=torch.float32)
        uncond = None
        has_negative = prompt.negative is not None or "negative_prompt_embeds" in prompt.embeds
        if prompt.true_cfg > 1 and has_negative:
            npe, nppe, _ = encode(prompt.negative or "", "negative_")
            uncond = {k: v for k, v in cond.items()} | {
                "encoder_hidden_states": npe,
                "pooled_projections": nppe,
            }
        latent = self.latent_shape(size)
        ids = self.pipe._prepare_latent_image_ids(
            1, latent[1] // 2, latent[2] // 2, "cpu", pe.dtype
        )
        info = _text_info(self.pipe, prompt) | {"true_cfg": prompt.true_cfg}
        return Conditioning(
            cond, uncond, {"txt_ids": text_ids, "img_ids": ids}, prompt.true_cfg, info
        )

    def reference_kwargs(self, prompt, guidance, size):
        text = {} if "prompt_embeds" in prompt.embeds else {"prompt": prompt.text}
        return (
            text
            | dict(prompt.embeds)
            | {
                "negative_prompt": prompt.negative,
                "guidance_scale": guidance,
                "true_cfg_scale": prompt.true_cfg,
                "height": size[0],
                "width": size[1],
            }
        )


class PixArtFamily(Family):
    """PixArt-alpha/sigma: T5 captions with their attention mask, learned variance, the
    resolution conditions of the 1024 px models."""

    name = "pixart"
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoisers = ("PixArtTransformer2DModel",)
    text = True

    def condition(self, prompt, guidance, size):
        cfg = guidance > 1
        pe, mask, npe, nmask = _encode(
            self.pipe,
            prompt=None if "prompt_embeds" in prompt.embeds else prompt.text,
            do_classifier_free_guidance=cfg,
            negative_prompt=prompt.negative if prompt.negative is not None else "",
            clean_caption=False,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            **prompt.embeds,
        )
        cond = {"encoder_hidden_states": pe, "encoder_attention_mask": mask}
        uncond = {"encoder_hidden_states": npe, "encoder_attention_mask": nmask} if cfg else None
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if (
            self.denoiser.config.sample_size == 128
            and type(self.pipe).__name__ == "PixArtAlphaPipeline"
        ):
            added = {
                "resolution": torch.tensor([list(size)], dtype=torch.float32),
                "aspect_ratio": torch.tensor([[size[0] / size[1]]], dtype=torch.float32),
            }
            cond["added_cond_kwargs"] = added
            if uncond is not None:
                uncond["added_cond_kwargs"] = added
            shared = {}
        else:
            shared = {"added_cond_kwargs": added}
        return Conditioning(cond, uncond, shared, guidance, _text_info(self.pipe, prompt))

    def reference_kwargs(self, prompt, guidance, size):
        kwargs = StableDiffusionFamily.reference_kwargs(self, prompt, guidance, size)
        if kwargs["negative_prompt"] is None:
            kwargs["negative_prompt"] = ""
        return kwargs | {"use_resolution_binning": False, "clean_caption": False}


FAMILIES: tuple[type[Family], ...] = (
    Family,
    PixelFamily,
    DiTFamily,
    StableDiffusionFamily,
    SDXLFamily,
    SD3Family,
    FluxFamily,
    PixArtFamily,
)


def family_of(pipeline: str | None, denoiser: str) -> type[Family] | None:
    """The family of a pipeline class name and its denoiser's class name; a folder that names
    no pipeline of its own (None, ``DiffusionPipeline``) by its denoiser alone. None when
    regprim does not run it."""
    if pipeline in (None, "DiffusionPipeline"):
        return next((fam for fam in FAMILIES if denoiser in fam.denoisers), None)
    fam = next((fam for fam in FAMILIES if pipeline in fam.pipelines), None)
    if fam is Family:
        fam = PixelFamily
    return fam if fam is not None and denoiser in fam.denoisers else None


def supported() -> str:
    """The pipeline classes regprim runs, for error messages."""
    return ", ".join(dict.fromkeys(p for fam in FAMILIES for p in fam.pipelines))
