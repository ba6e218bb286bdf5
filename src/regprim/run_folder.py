"""The run folder: the one module that writes and reads it (format: docs/run-folder.md).

A run folder holds ``config.json`` (resolved settings and metadata), ``summary.json`` (headline
numbers), ``tensors.safetensors`` (all tensors, subset axis in bitmask order), PNG figures,
``metrics.json`` and ``report.html``. Every file name is defined here, and every file is written
by :func:`atomic_write` (a temporary file renamed into place). A new run is assembled in a
hidden staging folder beside the target and renamed into place as a whole; while its minimal
features are being solved, a checkpoint is kept in the hidden sibling ``.NAME.partial``, and
running the same command again resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from regprim.run import Run

CONFIG = "config.json"
SUMMARY = "summary.json"
TENSORS = "tensors.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
REPORT = "report.html"
STABILITY = "stability.json"
TARGET_PNG = "target.png"
BASELINE_PNG = "baseline.png"
COMPONENTS_PNG = "components.png"
FIG3 = "fig3_incremental.png"
FIG4 = "fig4_action_regions.png"
FIG5 = "fig5_sparsity.png"
FIG6 = "fig6_irrelevant.png"
FIG7A = "fig7a_cells.png"
FIG7B = "fig7b_sets.png"
FIG8 = "fig8_code_influence.png"
RUN_FIGURES = (TARGET_PNG, BASELINE_PNG, COMPONENTS_PNG)
REQUIRED_TENSORS = ("f", "f0", "image", "minimal_features", "components")

Content = bytes | str | Callable[[Path], Any]


def reconstruction_png(cells: list[int]) -> str:
    """File name of ``regprim reconstruct --cells CELLS``."""
    return f"reconstruct-{'-'.join(map(str, cells))}.png"


def atomic_write(path: Path, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a function that writes the file it is given) to a
    temporary file beside ``path`` and rename it into place: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _json(data: Any) -> str:
    return json.dumps(data, indent=2)


def safetensors_content(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None):
    """Content for :func:`atomic_write`: ``tensors`` (moved to the CPU) as safetensors."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return lambda path: save_file(cpu, path, metadata)


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
        except (OSError, ValueError, AttributeError):
            what = "a run"
        msg = f"output folder {out} already holds {what}; pass --overwrite or choose another --out"
        raise FileExistsError(msg)
    msg = f"output folder {out} is not empty and holds no run; choose an empty or new --out"
    raise FileExistsError(msg)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def save_checkpoint(out: Path, key: str, state: dict[str, Tensor]) -> None:
    """Write the solver state for ``out`` (resumed by :func:`load_checkpoint`)."""
    folder = partial_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / CHECKPOINT, safetensors_content(state, {"key": key}))


def load_checkpoint(out: Path, key: str) -> dict[str, Tensor] | None:
    """The saved solver state for ``out`` if it was made with the same settings."""
    path = partial_dir(out) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None
        return load_file(path)
    except Exception:  # an unreadable checkpoint is discarded, never trusted
        return None


def write_run(
    run: Run, out: Path, overwrite: bool = False, files: dict[str, Content] | None = None
) -> Path:
    """Write ``run`` (config, summary, tensors) and ``files`` ({file name: content}) to ``out``:
    assembled in a staging folder and renamed into place as a whole."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.writing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        atomic_write(staging / CONFIG, _json(run.config))
        atomic_write(staging / SUMMARY, _json(run.summary))
        atomic_write(staging / TENSORS, safetensors_content(run.tensors))
        for name, content in (files or {}).items():
            atomic_write(staging / name, content)
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


def update_run(run: Run, files: dict[str, Content]) -> None:
    """Add or replace ``files`` in the folder of a written run, each atomically."""
    if run.path is None:
        msg = "this run has no folder; write it with regprim.explain(..., out=FOLDER) first"
        raise ValueError(msg)
    for name, content in files.items():
        atomic_write(run.path / name, content)


def metrics_file(metrics: list[Any]) -> str:
    from regprim.metrics import metrics_json

    return _json(metrics_json(metrics))


def stability_file(result: dict[str, Any]) -> str:
    return _json(result)


def read_stability(path: Path) -> dict[str, Any] | None:
    """``stability.json`` of a run folder, when ``regprim stability`` has written one."""
    file = Path(path) / STABILITY
    return json.loads(file.read_text()) if file.is_file() else None


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
        from regprim.metrics import Metric

        try:
            metrics = [Metric(**m) for m in json.loads((path / METRICS).read_text())["metrics"]]
        except (ValueError, KeyError, TypeError) as err:
            raise _corrupt(path, f"{METRICS} does not parse: {err}") from err
    return Run(config=config, summary=summary, tensors=tensors, path=path, metrics=metrics)
