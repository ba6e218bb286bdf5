"""Model registry: built-in split generators and a user's own, by one name.

A model is named by a built-in name (``regprim models`` lists them), by a local diffusers
pipeline folder ``diffusers:DIR[?options]`` (:mod:`regprim.generators.pipelines`), or by a
factory ``path/to/file.py:function`` or ``package.module:function``. A factory is called as
``function()`` or, when a layer is given, ``function(layer=LAYER)``, and returns a
:class:`regprim.SplitGenerator` (see :func:`regprim.split_sequential` and
:class:`regprim.HookSplit`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import site
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from regprim.config import DEFAULT_MODEL as DEFAULT_MODEL
from regprim.generators.base import ModelError, SplitGenerator
from regprim.generators.biggan import biggan
from regprim.generators.dcgan import EYE_CLASSES, dcgan_faces, eyes_128
from regprim.generators.pipelines import PREFIX, load_folder, sources, with_options
from regprim.generators.planted import planted

FACES_DDIM = Path(__file__).with_name("data") / "faces-ddim"


FACES_DDIM_CUT = "step=3"  # the sweep's choice (docs/models.md, "faces-ddim")


def faces_ddim(layer: str | None = None) -> SplitGenerator:
    """The diffusion model this project trained on dcgan-faces samples (docs/models.md), a
    diffusers folder shipped in the package, sampled in 4 DDIM steps; cut by default where
    ``regprim sweep --layers step=1..3 --n 4`` found its primitives most exclusive."""
    return load_folder(f"{PREFIX}{FACES_DDIM}?steps=4", layer or FACES_DDIM_CUT)


MODELS: dict[str, tuple[Callable[..., SplitGenerator], str]] = {
    "dcgan-faces": (dcgan_faces, "pretrained 64x64 faces DCGAN (gan-face-generate 1.1.1)"),
    "eyes-128": (
        eyes_128,
        "pretrained class-conditional 128x128 eyes DCGAN; --class one of " + ", ".join(EYE_CLASSES),
    ),
    "planted": (planted, "48x48 generator with 8 planted primitives (ground truth known)"),
    "faces-ddim": (
        faces_ddim,
        "32x32 faces diffusion U-Net trained by this project (scripts/), 4-step DDIM",
    ),
    "biggan-deep-128": (
        partial(biggan, resolution=128),
        "BigGAN-deep 128 (local weights); --class an ImageNet index 0..999 or name",
    ),
    "biggan-deep-256": (
        partial(biggan, resolution=256),
        "BigGAN-deep 256 (local weights); --class an ImageNet index 0..999 or name",
    ),
    "biggan-deep-512": (
        partial(biggan, resolution=512),
        "BigGAN-deep 512 (local weights); --class an ImageNet index 0..999 or name",
    ),
}


# -- a model file's load: its folder importable, what it reads from there recorded ---------------
READ: dict[Path, set[Path]] = {}  # model file -> the files of its folder its loads read
_READING: list[tuple[Path, set[Path]]] = []  # (folder, files) of the loads under way
_INSTALLED = (Path(sys.prefix), Path(sys.base_prefix), *map(Path, site.getsitepackages()))


def _inside(file: Path, folder: Path) -> bool:
    """Whether ``file`` is in ``folder`` and not in an installed environment kept there."""
    return file.is_relative_to(folder) and not any(file.is_relative_to(p) for p in _INSTALLED)


def _opened(event: str, args: tuple) -> None:
    """Audit hook: a file opened for reading during a model file's load is one it reads."""
    if event != "open" or not _READING:
        return
    name, mode = args[0], args[1]
    if not isinstance(name, str | os.PathLike) or (mode and set(str(mode)) & set("wax+")):
        return
    file = Path(os.fsdecode(name)).resolve()
    for folder, read in _READING:
        if _inside(file, folder) and file.is_file():
            read.add(file)


sys.addaudithook(_opened)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """While a model file loads or its factory runs: the file's folder is importable (first on
    ``sys.path``, as for a script run from there), and the files of that folder it reads are
    recorded in ``READ``: modules however imported (``import``, ``importlib``) and files opened
    from Python (``open``, ``torch.load``, ``numpy.load``). A file read by native code alone
    (``safetensors``' own reader) is not seen: give it as ``--weights``, which is hashed."""
    path = path.resolve()
    folder, read = path.parent, READ.setdefault(path, {path})
    others = {p.parent for p in READ} - {folder}
    for name, module in list(sys.modules.items()):  # another model's helper.py is not ours
        file = _module_file(module)
        if file and any(_inside(file, other) for other in others) and not _inside(file, folder):
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    _READING.append((folder, read))
    try:
        yield
    finally:
        _READING.remove((folder, read))
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        for module in list(sys.modules.values()):
            file = _module_file(module)
            if file and _inside(file, folder):
                read.add(file)


def _module_file(module: Any) -> Path | None:
    """The file a module was loaded from (None for one without: builtins, namespaces, or
    torch._classes, whose ``__file__`` is a bare "_classes.py")."""
    file = getattr(module, "__file__", None)
    real = isinstance(file, str) and os.path.isabs(file) and os.path.isfile(file)
    return Path(file).resolve() if real else None


def _user_factory(spec: str) -> Callable[..., SplitGenerator]:
    target, _, func = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            msg = f"model file {path} does not exist; give path/to/file.py:function"
            raise FileNotFoundError(msg)
        name = f"regprim_user_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            with _reading(path):
                mod_spec.loader.exec_module(module)
        except Exception as err:  # a user's file: say which and why, not a traceback
            where = f" (line {err.lineno})" if isinstance(err, SyntaxError) else ""
            msg = f"model file {path} failed to load{where}: {type(err).__name__}: {err}"
            raise ValueError(msg) from err
    else:
        module = importlib.import_module(target)
    if not hasattr(module, func):
        msg = (
            f"{target} has no function {func!r}; give {target}:FUNCTION returning a SplitGenerator"
        )
        raise ValueError(msg)
    return getattr(module, func)


def model_spec(model: str, prompt: str | None = None, negative_prompt: str | None = None) -> str:
    """The model's spec with a prompt given apart from it (``--prompt``) written into it, as
    ``?prompt=`` would be (``diffusers:DIR`` models only)."""
    if prompt is None and negative_prompt is None:
        return model
    return with_options(model, prompt=prompt, negative_prompt=negative_prompt)


def load_model(
    spec: str, layer: str | None = None, device: str = "cpu", weights: str | None = None
) -> SplitGenerator:
    """A split generator by built-in name or ``file.py:function`` / ``module:function``.

    ``weights`` is passed to the factory when given (a weights file or folder; ``"random"``
    for BigGAN's random initialisation)."""
    if spec.startswith(PREFIX):
        return load_folder(spec, layer).freeze().to(device)
    if spec in MODELS:
        factory = MODELS[spec][0]
    elif ":" in spec:
        factory = _user_factory(spec)
    else:
        msg = (
            f"unknown model {spec!r}; use one of {list(MODELS)}, a diffusers pipeline folder "
            "as diffusers:DIR, or your own as path/to/file.py:function or package.module:function"
        )
        raise ValueError(msg)
    kwargs = {k: v for k, v in (("layer", layer), ("weights", weights)) if v is not None}
    user = spec not in MODELS
    gen = _call_user_factory(spec, factory, kwargs) if user else factory(**kwargs)
    if not isinstance(gen, SplitGenerator):
        hint = (
            "; wrap it with regprim.split_sequential(model, layer, code_dim=...) or split_at"
            if isinstance(gen, torch.nn.Module)
            else ""
        )
        msg = f"{spec} returned {type(gen).__name__}, not a regprim.SplitGenerator{hint}"
        raise ModelError(msg)
    return gen.freeze().to(device)


def model_sources(spec: str, imports: bool = True) -> tuple[str, list[Path]]:
    """The spec with the paths it names made absolute, and the files and folders the model is
    read from (a run records them as ``model_files`` and hashes them into ``model_sha256``;
    built-in models: none): for a model file, it and the files of its folder its loads in this
    process read (``READ``: the modules it imported, however, and the files it opened; a run
    loads its model before it records them). ``imports=False``: a model file alone (what runs
    hashed before they recorded ``model_files``)."""
    if spec.startswith(PREFIX):
        return sources(spec)
    target, _, function = spec.rpartition(":")
    if target.endswith(".py") and Path(target).is_file():
        path = Path(target).resolve()
        if not imports:
            return f"{path}:{function}", [path]
        return f"{path}:{function}", [path, *sorted(READ.get(path, set()) - {path})]
    return spec, []


def _call_user_factory(spec: str, factory: Callable[..., SplitGenerator], kwargs: dict):
    """Call a user's factory; its failures become one clear error naming the factory."""
    try:
        params = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # no signature to read (a builtin): call it and see
        params = None
    takes_any = params is None or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    missing = [k for k in kwargs if not takes_any and k not in params]
    if missing:
        msg = (
            f"{spec} does not take {', '.join(m + '=' for m in missing)}; a model factory is "
            "def build(layer=None, weights=None) -> regprim.SplitGenerator (docs/models.md)"
        )
        raise ModelError(msg)
    target = spec.rpartition(":")[0]
    try:
        if target.endswith(".py"):
            with _reading(Path(target)):
                return factory(**kwargs)
        return factory(**kwargs)
    except Exception as err:
        msg = f"the model factory {spec} raised {type(err).__name__}: {err}"
        raise ValueError(msg) from err


LAYER_TABLE = Path(__file__).with_name("layers.json")
PACKAGES = {"dcgan-faces": "gan_face_generate", "eyes-128": "omniart_eye_generator"}


def weights_status(name: str) -> str:
    """Whether a built-in model's weights are here, without loading them."""
    if name in PACKAGES:
        found = importlib.util.find_spec(PACKAGES[name]) is not None
        return "weights installed" if found else f"needs the package {PACKAGES[name]}"
    if name.startswith("biggan"):
        from regprim.generators.biggan import cached_files

        if os.environ.get("REGPRIM_BIGGAN_DIR") or cached_files(name):
            return "weights found"
        return "no weights here: --weights FOLDER, or --weights random"
    return "built in"


def layer_table() -> dict:
    """``{model: {"default": layer, "layers": {layer: {"feature": shape, "image": shape}}}}``
    for the built-in models, as data (``regprim models`` answers from it at once; a slow test
    checks it against the real models, :func:`compute_layer_table`)."""
    return json.loads(LAYER_TABLE.read_text())


@torch.no_grad()
def compute_layer_table() -> dict:
    """The table of :func:`layer_table`, computed by building every built-in model (BigGAN at
    full size with random weights: minutes and over a GiB)."""
    table = {}
    for name in MODELS:
        gen = load_model(name, weights="random") if name.startswith("biggan") else load_model(name)
        layers = {}
        for layer in gen.layers:
            feature, image = gen.cut_at(layer).shapes()
            layers[layer] = {"feature": list(feature), "image": list(image)}
        table[name] = {"default": gen.layer, "layers": layers}
    return table


if __name__ == "__main__":  # python -m regprim.generators.registry: rewrite layers.json
    LAYER_TABLE.write_text(json.dumps(compute_layer_table(), indent=1) + "\n")
    print(f"wrote {LAYER_TABLE}")
