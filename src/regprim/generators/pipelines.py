"""A local folder in diffusers' layout as a split generator: ``--model diffusers:DIR``.

``DIR`` is what ``DiffusionPipeline.save_pretrained`` writes: ``model_index.json`` naming the
pipeline class and its components (a denoiser in ``unet/`` or ``transformer/``, a
``scheduler/``, optionally a ``vae/``, tokenizers and text encoders); or an ``AutoencoderKL``
saved alone (``config.json`` with ``"_class_name": "AutoencoderKL"``), whose decoder is then
the generator. Nothing is downloaded (``local_files_only``) and only safetensors weights are
read (``use_safetensors``: a pickled ``.bin`` could run code when loaded).

Options follow the folder after ``?``, joined by ``&``; values are read as written, with
``%26`` for a ``&`` inside a prompt (docs/models.md)::

    diffusers:runs/sd?steps=2&guidance=3&prompt=a photo of a smiling face&sampler=ddim

- ``steps``: the pipeline's ``num_inference_steps`` (default 4; 1 for a one-step model);
- ``guidance``: what the pipeline's ``guidance_scale`` means (default: the pipeline's own);
- ``prompt``, ``negative_prompt``: text, encoded by the folder's own tokenizers and text
  encoders as its pipeline encodes it (no prompt: the empty prompt);
- ``prompt_embeds``: a safetensors file of embeddings by diffusers' names (``prompt_embeds``,
  ``negative_prompt_embeds``, ``pooled_prompt_embeds``, ``negative_pooled_prompt_embeds``)
  instead of text;
- ``true_cfg``: FLUX's true classifier-free guidance scale (with a negative prompt);
- ``null_class``: the class label of a class-conditional U-Net's unconditional pass;
- ``sampler``: another scheduler from this one's config (``ddim``, ``euler``, ``heun``,
  ``dpm``, ``unipc``, ``deis``, ``pndm``, ``lms``, ``kdpm2``, ``flow-euler``, or a diffusers
  scheduler class name);
- ``size``: the image size, ``H`` or ``HxW`` (default: the pipeline's);
- ``checkpoint``: ``1`` recomputes the remaining steps in the backward pass (less memory);
- ``skips``: ``hold`` or ``carry`` what reaches ``g`` around a cut (default: ``carry`` for a
  one-step model, else ``hold``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote

from regprim.generators.base import SplitGenerator
from regprim.generators.diffusion import DiffusionSplit
from regprim.generators.families import Family, Prompt, family_of, quiet, supported
from regprim.generators.vae import vae_decoder

PREFIX = "diffusers:"
DENOISERS = ("unet", "transformer")
OPTIONS = (
    "steps",
    "guidance",
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "true_cfg",
    "null_class",
    "sampler",
    "size",
    "checkpoint",
    "skips",
)
EMBEDS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "prompt_attention_mask",
    "negative_prompt_attention_mask",
)
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}
LAYOUT = (
    "a diffusers pipeline folder (DiffusionPipeline.save_pretrained): model_index.json, unet/ "
    "or transformer/, scheduler/, optionally vae/ and text encoders; or an AutoencoderKL "
    "folder (config.json)"
)
WAY_ROUND = (
    "the way round: --model file.py:build returning a regprim.SplitGenerator "
    "(DiffusionSplit or HookSplit; docs/models.md)"
)
# Local files, safetensors only, nothing downloaded; low_cpu_mem_usage=False says what diffusers
# does without the optional accelerate package, which it otherwise prints a paragraph about.
LOCAL = {"local_files_only": True, "low_cpu_mem_usage": False, "use_safetensors": True}


def parse_spec(spec: str) -> tuple[Path, dict[str, str]]:
    """``diffusers:DIR?key=value&...`` -> (DIR, options); unknown options are an error."""
    folder, _, query = spec.removeprefix(PREFIX).partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS:
            msg = f"unknown option {item!r} in {spec!r}; options: {', '.join(OPTIONS)}"
            raise ValueError(msg)
        options[key] = unquote(value)
    return Path(folder), options


def with_options(spec: str, **options: str | None) -> str:
    """``spec`` with ``options`` set (None: removed), values quoted where they must be."""
    folder, current = parse_spec(spec)
    current |= {k: v for k, v in options.items() if v is not None}
    query = "&".join(f"{k}={quote(v, safe=' ,./:')}" for k, v in current.items())
    return f"{PREFIX}{folder}" + (f"?{query}" if query else "")


def sources(spec: str) -> tuple[str, list[Path]]:
    """The spec with its paths made absolute, and the files it reads (hashed into a run's
    ``model_sha256``)."""
    folder, options = parse_spec(spec)
    paths = [folder.resolve()]
    if "prompt_embeds" in options:
        options["prompt_embeds"] = str(Path(options["prompt_embeds"]).resolve())
        paths.append(Path(options["prompt_embeds"]))
    return with_options(f"{PREFIX}{paths[0]}", **options), paths


# what each component of model_index.json must be: (library, base class, in words)
KINDS = {
    "unet": ("diffusers", "ModelMixin", "a diffusers model"),
    "transformer": ("diffusers", "ModelMixin", "a diffusers model"),
    "vae": ("diffusers", "ModelMixin", "a diffusers autoencoder"),
    "scheduler": ("diffusers", "SchedulerMixin", "a diffusers scheduler"),
    "text_encoder": ("transformers", "PreTrainedModel", "a transformers model"),
    "tokenizer": ("transformers", "PreTrainedTokenizerBase", "a transformers tokenizer"),
}


def _component_class(folder: Path, key: str, entry: Any) -> type | None:
    """The class a component entry of ``model_index.json`` names, which must be of its key's
    kind (``KINDS``; ``text_encoder_2`` as ``text_encoder``; other keys: a class of diffusers or
    transformers); None for an absent component (``[null, null]``)."""
    if not (isinstance(entry, list) and len(entry) == 2):
        msg = f"{folder}/model_index.json: {key} is {entry!r}, not [library, class]; {LAYOUT}"
        raise ValueError(msg)
    library, name = entry
    if library is None and name is None:
        return None
    kind = re.sub(r"_\d+$", "", key)
    want, base, words = KINDS.get(kind, (library, None, "a diffusers or transformers class"))
    module = None
    if library == want and library in ("diffusers", "transformers"):
        module = importlib.import_module(library)
    cls = getattr(module, str(name), None) if module is not None else None
    fits = isinstance(cls, type) and (base is None or issubclass(cls, getattr(module, base)))
    if fits and kind == "vae":
        fits = "Autoencoder" in cls.__name__
    if not fits:
        msg = (
            f"{folder}/model_index.json names {library}.{name} as its {key}, which is not "
            f"{words} class; {LAYOUT}"
        )
        raise ValueError(msg)
    if not (folder / key).is_dir():
        msg = f"{folder} names {key} ({name}) in model_index.json but has no {key}/ folder"
        raise FileNotFoundError(msg)
    return cls


PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _loaded(what: str | Path, load) -> Any:
    """``load()``; a folder ``what`` whose weights are pickles is refused naming them and the
    fix."""
    try:
        return load()
    except (OSError, ValueError) as err:
        text = str(err)
        if "safetensors" in text or ".bin" in text or "pickle" in text:
            root = Path(what)
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in PICKLES)
            named = f": {', '.join(found)} {'is a pickle' if len(found) == 1 else 'are pickles'}"
            msg = (
                f"{what} holds no safetensors weights{named if found else ''} (regprim does "
                "not load pickled .bin or .pt files, which can run code): convert them, e.g. "
                "load the pipeline and save_pretrained(DIR, safe_serialization=True) "
                f"({type(err).__name__}: {text})"
            )
            raise ValueError(msg) from err
        raise


def _bare(folder: Path, entries: dict[str, Any], key: str) -> Any:
    """The components of a folder that names no pipeline regprim knows, loaded one by one."""
    denoiser_cls = _component_class(folder, key, entries[key])
    scheduler_cls = _component_class(folder, "scheduler", entries["scheduler"])
    assert denoiser_cls is not None and scheduler_cls is not None
    vae = None
    vae_cls = _component_class(folder, "vae", entries["vae"]) if entries.get("vae") else None
    if vae_cls is not None:
        vae = _loaded(f"{folder}/vae", lambda: vae_cls.from_pretrained(folder / "vae", **LOCAL))
    denoiser = _loaded(
        f"{folder}/{key}", lambda: denoiser_cls.from_pretrained(folder / key, **LOCAL)
    )
    parts = {
        key: denoiser,
        "vae": vae,
        "scheduler": scheduler_cls.from_pretrained(folder / "scheduler"),
    }
    return SimpleNamespace(**parts)


def _vae_folder(folder: Path, layer: str | None) -> SplitGenerator:
    """An AutoencoderKL folder (its config.json) as a generator: the decoder alone."""
    config = folder / "config.json"
    if not (
        config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    ):
        msg = f"{folder} has no model_index.json; --model diffusers:DIR takes {LAYOUT}"
        raise FileNotFoundError(msg)
    import diffusers

    with quiet():
        vae = _loaded(str(folder), lambda: diffusers.AutoencoderKL.from_pretrained(folder, **LOCAL))
    return vae_decoder(vae, layer or "mid_block", name=f"vae-decoder:{folder.name}")


def _embeddings(path: str) -> dict[str, Any]:
    """A safetensors file of prompt embeddings by diffusers' names."""
    if not path.endswith(".safetensors"):
        msg = (
            f"prompt_embeds={path}: give a .safetensors file (safetensors.torch.save_file("
            f"{{'prompt_embeds': ...}}, 'embeds.safetensors')); pickled tensors are not read"
        )
        raise ValueError(msg)
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors' own error: a file that is not one (a pickle?)
        msg = (
            f"prompt_embeds={path} is not a safetensors file ({err}); write it with "
            "safetensors.torch.save_file (pickled tensors are not read)"
        )
        raise ValueError(msg) from err
    unknown = sorted(set(tensors) - set(EMBEDS))
    if "prompt_embeds" not in tensors or unknown:
        msg = (
            f"{path} holds {sorted(tensors)}; it needs prompt_embeds (1, tokens, dim) and may "
            f"hold {', '.join(EMBEDS[1:])}"
        )
        raise ValueError(msg)
    return tensors


def _scheduler(scheduler: Any, sampler: str | None) -> Any:
    """``scheduler``, or the one ``sampler`` names built from its config."""
    if not sampler:
        return scheduler
    import diffusers

    name = SAMPLERS.get(sampler, sampler)
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        msg = (
            f"sampler={sampler!r} is neither one of {sorted(SAMPLERS)} nor a diffusers "
            "scheduler class name"
        )
        raise ValueError(msg)
    config = dict(scheduler.config)
    if name == "DPMSolverMultistepScheduler" and str(config.get("algorithm_type", "")).startswith(
        "sde"
    ):
        config["algorithm_type"] = "dpmsolver++"  # the ODE solver of the same order
    return cls.from_config(config)


def _number(options: dict[str, str], key: str, kind: type, default: Any) -> Any:
    if key not in options:
        return default
    try:
        return kind(options[key])
    except ValueError:
        msg = f"option {key}={options[key]!r} is not a {kind.__name__}"
        raise ValueError(msg) from None


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    if not (1 <= len(parts) <= 2 and all(p.isdigit() and int(p) > 0 for p in parts)):
        msg = f"option size={value!r}: give H or HxW in pixels, e.g. size=512 or size=768x512"
        raise ValueError(msg)
    h, w = int(parts[0]), int(parts[-1])
    return h, w


def default_guidance(pipe: Any) -> float:
    """The pipeline's own default ``guidance_scale`` (1: a pipeline without guidance)."""
    if pipe is None:
        return 1.0
    param = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(param.default) if param is not None else 1.0


def from_pipeline(
    pipe: Any,
    steps: int = 4,
    layer: str | None = None,
    *,
    prompt: Prompt | str = "",
    guidance: float | None = None,
    sampler: str | None = None,
    size: tuple[int, int] | None = None,
    null_class: int | None = None,
    gradient_checkpointing: bool = False,
    skips: str | None = None,
    name: str = "diffusion",
) -> DiffusionSplit:
    """A loaded diffusers pipeline (``StableDiffusionPipeline``, ``FluxPipeline``, ... or a
    namespace of a denoiser, scheduler and optional VAE) as a :class:`DiffusionSplit` that
    samples as the pipeline does (:mod:`regprim.generators.families`)."""
    prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
    key = next((k for k in DENOISERS if getattr(pipe, k, None) is not None), None)
    if key is None:
        msg = f"{type(pipe).__name__} has no unet or transformer; {WAY_ROUND}"
        raise ValueError(msg)
    denoiser, vae = getattr(pipe, key), getattr(pipe, "vae", None)
    pipeline = None if isinstance(pipe, SimpleNamespace) else type(pipe).__name__
    family = family_class(pipeline, type(denoiser).__name__)(
        denoiser, vae, None if pipeline is None else pipe
    )
    _check_text(family, prompt)
    scheduler = _scheduler(pipe.scheduler, sampler)
    explicit, num_classes = guidance is not None, family.classes()
    if guidance is None:
        guidance = default_guidance(None if pipeline is None else pipe)
    if explicit and guidance > 1 and not (family.text or num_classes):
        msg = (
            f"guidance={guidance:g} needs an unconditional pass, and this {family.name} model "
            "takes neither a prompt nor classes: drop guidance"
        )
        raise ValueError(msg)
    if null_class is None and family.name == "dit":
        null_class = num_classes  # DiT's label table holds one more row: "no class"
    size = size or family.default_size()
    conditioning = family.condition(prompt, guidance, size) if family.text else None
    return DiffusionSplit(
        denoiser,
        scheduler,
        steps,
        layer,
        vae=vae,
        family=family,
        conditioning=conditioning,
        guidance=guidance if num_classes else 1.0,
        num_classes=num_classes,
        null_class=null_class,
        size=size,
        gradient_checkpointing=gradient_checkpointing,
        skips=skips,
        prompt=prompt,
        name=name,
        class_names=_class_names(pipe, num_classes),
    )


def family_class(pipeline: str | None, denoiser: str) -> type[Family]:
    """:func:`family_of`, or an error that says what regprim runs and the way round."""
    found = family_of(pipeline, denoiser)
    if found is None:
        msg = (
            f"regprim does not run {pipeline or 'a folder'} with a {denoiser}: it runs "
            f"{supported()} (and folders that name no pipeline, of a UNet2DModel, a "
            f"UNet2DConditionModel with prompt_embeds, or a DiT); {WAY_ROUND}"
        )
        raise ValueError(msg)
    return found


def _check_text(family: Family, prompt: Prompt) -> None:
    if family.text and "prompt_embeds" not in prompt.embeds:
        pipe = family.pipe
        missing = [
            k
            for k in ("tokenizer", "text_encoder")
            if pipe is None or getattr(pipe, k, None) is None
        ]
        if missing and family.name != "sd3":
            msg = (
                f"this folder has no {' or '.join(missing)} to encode the prompt with: give "
                "?prompt_embeds=FILE.safetensors (docs/models.md, 'Prompts')"
            )
            raise ValueError(msg)
    if not family.text and (prompt.text or prompt.negative or prompt.embeds):
        msg = (
            f"the {family.name} family takes no prompt; drop prompt, negative_prompt, prompt_embeds"
        )
        raise ValueError(msg)


def _class_names(pipe: Any, num_classes: int) -> tuple[str, ...]:
    """Readable class names by index, each a comma-separated list of its names (DiT's
    ``id2label``, which DiTPipeline keeps as ``labels``: name -> index)."""
    labels = getattr(pipe, "labels", None)
    if not (num_classes and isinstance(labels, dict) and labels):
        return ()
    names: dict[int, list[str]] = {}
    for label, index in labels.items():
        names.setdefault(int(index), []).append(label)
    return tuple(", ".join(names.get(i, [])) for i in range(num_classes))


def load_folder(spec: str, layer: str | None = None) -> SplitGenerator:
    """The split generator of ``diffusers:DIR[?options]`` (module docstring)."""
    folder, options = parse_spec(spec)
    if not folder.is_dir():
        msg = f"{folder} is not a folder; --model diffusers:DIR takes {LAYOUT}"
        raise FileNotFoundError(msg)
    index = folder / "model_index.json"
    if not index.is_file():
        return _vae_folder(folder, layer)
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        msg = f"{index} is not JSON ({err}); {LAYOUT}"
        raise ValueError(msg) from None
    if not isinstance(entries, dict):
        msg = f"{index} holds a {type(entries).__name__}, not the components; {LAYOUT}"
        raise ValueError(msg)
    classes = {  # components are [library, class]; other entries are settings
        k: _component_class(folder, k, v)
        for k, v in entries.items()
        if k[0] != "_" and (isinstance(v, list) or re.sub(r"_\d+$", "", k) in KINDS)
    }
    found = [key for key in DENOISERS if classes.get(key)]
    if not found or not classes.get("scheduler"):
        msg = f"{index} names {sorted(classes)}; {LAYOUT}; {WAY_ROUND}"
        raise ValueError(msg)
    denoiser = classes[found[0]]
    assert denoiser is not None
    pipeline = entries.get("_class_name")
    family_class(pipeline, denoiser.__name__)  # before loading anything
    import diffusers

    with quiet():
        if pipeline and pipeline != "DiffusionPipeline":
            absent = {k: None for k, v in entries.items() if isinstance(v, list) and v[0] is None}
            pipe = _loaded(
                str(folder),
                lambda: diffusers.DiffusionPipeline.from_pretrained(folder, **LOCAL, **absent),
            )
        else:
            pipe = _bare(folder, entries, found[0])
        embeds = _embeddings(options["prompt_embeds"]) if "prompt_embeds" in options else {}
        prompt = Prompt(
            options.get("prompt", ""),
            options.get("negative_prompt"),
            embeds,
            _number(options, "true_cfg", float, 1.0),
        )
        return from_pipeline(
            pipe,
            _number(options, "steps", int, 4),
            layer,
            prompt=prompt,
            guidance=_number(options, "guidance", float, None),
            sampler=options.get("sampler"),
            size=_size(options.get("size")),
            null_class=_number(options, "null_class", int, None),
            gradient_checkpointing=options.get("checkpoint") == "1",
            skips=options.get("skips"),
            name=f"diffusers:{folder.name}",
        )
