"""A local folder in diffusers' layout as a split generator: ``--model diffusers:DIR``.

``DIR`` is what ``DiffusionPipeline.save_pretrained`` writes: ``model_index.json``, a denoiser
in ``unet/`` or ``transformer/``, a ``scheduler/`` and optionally a ``vae/`` (latent diffusion:
the VAE decodes inside ``g``); or an ``AutoencoderKL`` saved alone (``config.json`` with
``"_class_name": "AutoencoderKL"``), whose decoder is then the generator. Nothing is downloaded:
every component is loaded with ``local_files_only=True``.

Options follow the folder after ``?``, joined by ``&`` (docs/models.md)::

    diffusers:runs/ddim?steps=4&guidance=3&prompt=embeds.safetensors&sampler=ddim

- ``steps``: sampler steps (default 4; 1 for a one-step model);
- ``guidance``: classifier-free guidance scale (default 1: none);
- ``prompt``: a tensor file (safetensors or torch) with ``prompt_embeds`` ``(1, tokens, dim)``
  and, for guidance, ``negative_prompt_embeds``;
- ``null_class``: the class label of a class-conditional U-Net's unconditional pass;
- ``sampler``: ``ddim`` replaces a stochastic scheduler (DDPM) by DDIM with its betas;
- ``checkpoint``: ``1`` recomputes the remaining steps in the backward pass (less memory);
- ``skips``: for a block cut, ``hold`` (default) or ``carry`` what reaches ``g`` around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from regprim.generators.base import SplitGenerator
from regprim.generators.diffusion import DiffusionSplit
from regprim.generators.vae import vae_decoder

PREFIX = "diffusers:"
DENOISERS = ("unet", "transformer")
OPTIONS = ("steps", "guidance", "prompt", "null_class", "sampler", "checkpoint", "skips")
LAYOUT = (
    "a diffusers pipeline folder (DiffusionPipeline.save_pretrained): model_index.json, unet/ "
    "or transformer/, scheduler/, optionally vae/; or an AutoencoderKL folder (config.json)"
)
STOCHASTIC = ("DDPMScheduler", "DDPMWuerstchenScheduler")
# Local files only (nothing is downloaded); low_cpu_mem_usage=False says what diffusers does
# without the optional accelerate package, which it otherwise prints a paragraph about.
LOCAL = {"local_files_only": True, "low_cpu_mem_usage": False}


def parse_spec(spec: str) -> tuple[Path, dict[str, str]]:
    """``diffusers:DIR?key=value&...`` -> (DIR, options); unknown options are an error."""
    folder, _, query = spec.removeprefix(PREFIX).partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS:
            msg = f"unknown option {item!r} in {spec!r}; options: {', '.join(OPTIONS)}"
            raise ValueError(msg)
        options[key] = value
    return Path(folder), options


def sources(spec: str) -> tuple[str, list[Path]]:
    """The spec with its paths made absolute, and the files it reads (hashed into a run's
    ``model_sha256``)."""
    folder, options = parse_spec(spec)
    paths = [folder.resolve()]
    if "prompt" in options:
        options["prompt"] = str(Path(options["prompt"]).resolve())
        paths.append(Path(options["prompt"]))
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{PREFIX}{paths[0]}" + (f"?{query}" if query else ""), paths


def _component(folder: Path, key: str, entry: list[str]) -> Any:
    import diffusers

    library, cls = entry
    if library != "diffusers" or not hasattr(diffusers, cls):
        msg = f"{folder}/model_index.json: {key} is {library}.{cls}, not a diffusers class"
        raise ValueError(msg)
    where = folder / key
    if not where.is_dir():
        msg = f"{folder} names {key} ({cls}) in model_index.json but has no {key}/ folder"
        raise FileNotFoundError(msg)
    loader = getattr(diffusers, cls)
    if key == "scheduler":
        return loader.from_pretrained(where)
    return loader.from_pretrained(where, **LOCAL)


def _embeddings(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        tensors = load_file(path)
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    if "prompt_embeds" not in tensors:
        msg = f"{path} holds {sorted(tensors)}; it needs prompt_embeds (1, tokens, dim)"
        raise ValueError(msg)
    return tensors


def _vae_folder(folder: Path, layer: str | None) -> SplitGenerator:
    """An AutoencoderKL folder (its config.json) as a generator: the decoder alone."""
    config = folder / "config.json"
    if not (
        config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    ):
        msg = f"{folder} has no model_index.json; --model diffusers:DIR takes {LAYOUT}"
        raise FileNotFoundError(msg)
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(folder, **LOCAL)
    return vae_decoder(vae, layer or "mid_block", name=f"vae-decoder:{folder.name}")


def load_folder(spec: str, layer: str | None = None) -> SplitGenerator:
    """The split generator of ``diffusers:DIR[?options]`` (module docstring)."""
    folder, options = parse_spec(spec)
    if not folder.is_dir():
        msg = f"{folder} is not a folder; --model diffusers:DIR takes {LAYOUT}"
        raise FileNotFoundError(msg)
    index = folder / "model_index.json"
    if not index.is_file():
        return _vae_folder(folder, layer)
    entries = json.loads(index.read_text())
    found = [key for key in DENOISERS if key in entries]
    if not found or "scheduler" not in entries:
        msg = f"{index} names {sorted(k for k in entries if not k.startswith('_'))}; {LAYOUT}"
        raise ValueError(msg)
    denoiser = _component(folder, found[0], entries[found[0]])
    scheduler = _component(folder, "scheduler", entries["scheduler"])
    vae = _component(folder, "vae", entries["vae"]) if entries.get("vae") else None
    name = type(scheduler).__name__
    if options.get("sampler") == "ddim":
        import diffusers

        scheduler = diffusers.DDIMScheduler.from_config(scheduler.config)
    elif name in STOCHASTIC:
        msg = (
            f"{folder}'s scheduler is {name}, which draws noise at every step; g must be "
            f"deterministic: add ?sampler=ddim to sample it with DDIM (its betas, eta = 0)"
        )
        raise ValueError(msg)
    cfg = denoiser.config
    num_classes = int(cfg.get("num_class_embeds") or cfg.get("num_embeds_ada_norm") or 0)
    embeds = _embeddings(options["prompt"]) if "prompt" in options else {}
    null = options.get("null_class")
    if null is None and found[0] == "transformer":
        null = num_classes  # DiT's label table holds one more row: "no class"
    return DiffusionSplit(
        denoiser,
        scheduler,
        int(options.get("steps", 4)),
        layer,
        vae=vae,
        num_classes=num_classes,
        null_class=None if null is None else int(null),
        prompt_embeds=embeds.get("prompt_embeds"),
        negative_embeds=embeds.get("negative_prompt_embeds"),
        guidance=float(options.get("guidance", 1.0)),
        gradient_checkpointing=options.get("checkpoint") == "1",
        skips=options.get("skips", "hold"),
        name=f"diffusers:{folder.name}",
    )
