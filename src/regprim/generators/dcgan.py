"""Pretrained DCGANs shipped inside PyPI wheels (both MIT licensed).

- ``dcgan-faces``: ``gan-face-generate==1.1.1``, 64x64 faces (DigiFace1M), nz=100, ngf=64.
- ``eyes-128``: ``omniart-eye-generator==0.1``, 128x128 eyes, 8 eye-colour classes; the input is
  100 noise numbers followed by an 8-way one-hot class.

The architectures are rebuilt here (the eye package loads its weights at import time without
``map_location``); the weight files are located with ``importlib.util.find_spec`` and loaded with
``torch.load(..., weights_only=True)`` on the CPU. Both are plain ``nn.Sequential`` stacks, so the
split is a slice and ``g`` costs only the layers after the cut.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from regprim.generators.base import SequentialSplit, conditional_sampler, gaussian_sampler

EYE_CLASSES = ("amber", "blue", "brown", "gray", "grayscale", "green", "hazel", "red")


def dcgan_stack(nz: int, widths: list[int], nc: int = 3, dropout_after_first: float = 0.0):
    """The DCGAN generator stack ``ConvT-BN-ReLU`` x len(widths), then ``ConvT-Tanh``.

    Returns ``(sequential, cut_points)`` where ``cut_points`` maps ``blockK`` to the child name
    of the K-th block's ReLU (the layers the model can be cut after).
    """
    layers: list[nn.Module] = []
    cut_points: dict[str, str] = {}
    c_in = nz
    for k, width in enumerate(widths):
        first = k == 0
        layers += [
            nn.ConvTranspose2d(c_in, width, 4, 1 if first else 2, 0 if first else 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        cut_points[f"block{k + 1}"] = str(len(layers) - 1)
        if first and dropout_after_first:
            layers.append(nn.Dropout(dropout_after_first))
        c_in = width
    layers += [nn.ConvTranspose2d(c_in, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers), cut_points


def as_main(stack: nn.Sequential) -> nn.Module:
    """Wrap a stack as ``.main``: the original generators name their weights ``main.K.*``."""
    wrapper = nn.Module()
    wrapper.main = stack
    return wrapper


def package_file(package: str, filename: str, install: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        msg = f"the weights package {package!r} is not installed; install it with: {install}"
        raise ModuleNotFoundError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        msg = f"{path} is missing from the installed {package!r}; reinstall it with: {install}"
        raise FileNotFoundError(msg)
    return path


def load_state_dict(
    module: nn.Module, path: Path, key: str | None = None, allow_missing: bool = False
) -> None:
    """Load weights from ``path`` (``weights_only=True``) and check they fit ``module``.

    ``allow_missing`` accepts a file without some of the module's keys (they keep their
    initial values), as BigGAN's own loader does; present keys must still match in shape.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip files, non-tensor payloads
        msg = f"{path} is not a loadable PyTorch weights file ({err}); replace it with the original"
        raise ValueError(msg) from err
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            msg = f"{path} has no {key!r} entry (found {found}); is it the right weights file?"
            raise ValueError(msg)
        obj = obj[key]
    if not isinstance(obj, dict):
        msg = f"{path} does not hold a state dict (got {type(obj).__name__})"
        raise ValueError(msg)
    expected = module.state_dict()
    bad = [
        k
        for k, v in expected.items()
        if (k not in obj and not allow_missing)
        or (k in obj and (not isinstance(obj[k], torch.Tensor) or obj[k].shape != v.shape))
    ]
    if bad or set(obj) - set(expected):
        msg = (
            f"{path} does not match the expected architecture: missing or mis-shaped "
            f"{bad[:5]}, unexpected {sorted(set(obj) - set(expected))[:5]}"
        )
        raise ValueError(msg)
    module.load_state_dict(obj, strict=not allow_missing)


def pretrained_dcgan(
    name: str,
    weights: Path,
    nz: int,
    widths: list[int],
    layer: str | None,
    key: str | None = None,
    dropout_after_first: float = 0.0,
    **kwargs,
) -> SequentialSplit:
    """A DCGAN stack with ``weights`` (the state dict, or its ``key`` entry) loaded, cut at
    ``layer`` (default ``block3``); ``kwargs`` go to :class:`SequentialSplit`."""
    model, cuts = dcgan_stack(nz, widths, dropout_after_first=dropout_after_first)
    load_state_dict(as_main(model), weights, key=key)
    return SequentialSplit(
        model,
        cuts,
        layer or "block3",
        code_to_input=lambda z: z.view(z.shape[0], -1, 1, 1),
        name=name,
        code_dim=nz,
        **kwargs,
    ).freeze()


def dcgan_faces(layer: str | None = None, weights: str | Path | None = None) -> SequentialSplit:
    """The pretrained 64x64 faces DCGAN; default cut ``block3`` (16x16x128)."""
    install = "pip install --no-deps gan-face-generate==1.1.1"
    path = Path(weights) if weights else package_file("gan_face_generate", "weights.tar", install)
    return pretrained_dcgan(
        "dcgan-faces",
        path,
        100,
        [512, 256, 128, 64],
        layer,
        key="netG_state_dict",
        sampler=gaussian_sampler(100),
    )


def eyes_128(layer: str | None = None, weights: str | Path | None = None) -> SequentialSplit:
    """The pretrained class-conditional 128x128 eyes DCGAN; default cut ``block3`` (16x16x256)."""
    install = "pip install --no-deps omniart-eye-generator==0.1"
    file = "generator_model_state.pth"
    path = Path(weights) if weights else package_file("omniart_eye_generator", file, install)
    return pretrained_dcgan(
        "eyes-128",
        path,
        108,
        [1024, 512, 256, 128, 64],
        layer,
        dropout_after_first=0.2,
        sampler=conditional_sampler(100, len(EYE_CLASSES)),
        num_classes=len(EYE_CLASSES),
        class_names=EYE_CLASSES,
    )
