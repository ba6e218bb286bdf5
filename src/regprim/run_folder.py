"""The run folder: the one module that writes and reads it (format: docs/run-folder.md).

A run folder holds ``config.json`` (resolved settings and metadata), ``summary.json`` (headline
numbers), ``tensors.safetensors`` (all tensors, subset axis in bitmask order) and PNG figures.
It is written atomically: everything goes to the hidden sibling ``.NAME.writing`` and is renamed
into place at the end. While minimal features are being solved, a checkpoint is kept in the
hidden sibling ``.NAME.partial``; running the same command again resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

CONFIG = "config.json"
SUMMARY = "summary.json"
TENSORS = "tensors.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
REQUIRED_TENSORS = ("f", "f0", "image", "minimal_features", "components")


@dataclass
class Run:
    """A finished run: its settings, headline numbers and tensors (see docs/run-folder.md)."""

    config: dict[str, Any]
    summary: dict[str, Any]
    tensors: dict[str, Tensor]
    path: Path | None = None
    metrics: list[Any] | None = field(default=None, repr=False)

    @property
    def players(self) -> list[int]:
        return list(self.summary["players"])

    @property
    def n(self) -> int:
        return int(self.summary["n"])

    @property
    def denoised(self) -> bool:
        return self.summary.get("components_used") == "denoised"

    @property
    def components(self) -> Tensor:
        """The components the run uses: the denoised ones after ``--denoise``, else the raw."""
        return self.tensors["components_denoised" if self.denoised else "components"]

    @property
    def minimal_features(self) -> Tensor:
        """Minimal features matching :attr:`components`."""
        return self.tensors["minimal_features_denoised" if self.denoised else "minimal_features"]

    @property
    def f0(self) -> Tensor:
        return self.tensors["f0"]

    @property
    def salient(self) -> Tensor:
        return torch.tensor(self.summary["salient"], dtype=torch.long)

    def __str__(self) -> str:
        s = self.summary
        return (
            f"Run({s['model']}/{s['layer']}, n={s['n']}, players={s['players']}, "
            f"salient={len(s['salient'])}, subsets meeting constraint="
            f"{s['subsets_meeting_constraint']:.3f}, universal matching residual="
            f"{s['universal_matching_max_rel_residual']:.2e})"
        )


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure atomically (a reader never sees half a PNG)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def fingerprint(config: dict[str, Any]) -> str:
    """Hash of the settings that determine the minimal features (to match a checkpoint)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def check_output(out: Path, overwrite: bool) -> None:
    """Fail early, before any work, if ``out`` holds something we must not replace."""
    if not out.exists():
        return
    if not out.is_dir():
        msg = f"output {out} is a file, not a folder; choose another --out"
        raise FileExistsError(msg)
    if not any(out.iterdir()):
        return
    if (out / CONFIG).is_file():
        if overwrite:
            return
        try:
            old = json.loads((out / CONFIG).read_text())
            what = f"a run of {old.get('model')}/{old.get('layer')} from {old.get('created')}"
        except (OSError, ValueError):
            what = "a run"
        msg = f"output folder {out} already holds {what}; pass --overwrite or choose another --out"
        raise FileExistsError(msg)
    msg = f"output folder {out} is not empty and holds no run; choose an empty or new --out"
    raise FileExistsError(msg)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def save_checkpoint(out: Path, key: str, state: dict[str, Tensor]) -> None:
    """Write the solver state for ``out`` atomically (resumed by :func:`load_checkpoint`)."""
    folder = partial_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CHECKPOINT}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp, {"key": key})
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(out: Path, key: str) -> dict[str, Tensor] | None:
    """The saved solver state for ``out`` if it was made with the same settings."""
    path = partial_dir(out) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None
        return load_file(path)
    except Exception:  # an unreadable checkpoint is discarded, never trusted
        return None


def write_run(
    run: Run,
    out: Path,
    overwrite: bool = False,
    figures: dict[str, Any] | None = None,
    extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``run`` and its ``figures`` ({file name: matplotlib figure}) to ``out``
    atomically; ``extra(folder)`` adds files before the rename."""
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.writing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / CONFIG).write_text(json.dumps(run.config, indent=2))
        (staging / SUMMARY).write_text(json.dumps(run.summary, indent=2))
        tensors = {k: v.detach().cpu().contiguous() for k, v in run.tensors.items()}
        save_file(tensors, staging / TENSORS)
        for name, fig in (figures or {}).items():
            save_figure(fig, staging / name)
        if extra is not None:
            extra(staging)
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(partial_dir(out), ignore_errors=True)
    run.path = out
    return out


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(
        f"run folder {path} is corrupt or truncated ({why}); rerun `regprim explain` to recreate it"
    )


def load_run(path: str | Path) -> Run:
    """Read a run folder written by :func:`write_run`, checking it is complete."""
    path = Path(path)
    if not path.is_dir():
        msg = f"run folder {path} does not exist; give the --out folder of `regprim explain`"
        raise FileNotFoundError(msg)
    for name in (CONFIG, SUMMARY, TENSORS):
        if not (path / name).is_file():
            raise _corrupt(path, f"{name} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
        summary = json.loads((path / SUMMARY).read_text())
    except ValueError as err:
        raise _corrupt(path, f"JSON does not parse: {err}") from err
    try:
        tensors = load_file(path / TENSORS)
    except Exception as err:
        raise _corrupt(path, f"{TENSORS} does not load: {err}") from err
    missing = [k for k in REQUIRED_TENSORS if k not in tensors]
    if missing:
        raise _corrupt(path, f"{TENSORS} lacks {missing}")
    for key in ("n", "players", "model", "layer", "salient"):
        if key not in summary:
            raise _corrupt(path, f"{SUMMARY} lacks {key!r}")
    size = 2 ** int(summary["n"])
    for key in ("minimal_features", "components"):
        if tensors[key].shape != (size, *tensors["f"].shape):
            shape = tuple(tensors[key].shape)
            raise _corrupt(path, f"{key} has shape {shape}, expected ({size}, *f.shape)")
    metrics = None
    if (path / METRICS).is_file():
        from regprim.verification import Metric

        try:
            metrics = [Metric(**m) for m in json.loads((path / METRICS).read_text())["metrics"]]
        except (ValueError, KeyError, TypeError) as err:
            raise _corrupt(path, f"{METRICS} does not parse: {err}") from err
    return Run(config=config, summary=summary, tensors=tensors, path=path, metrics=metrics)
