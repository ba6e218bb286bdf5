"""The run folder: the one module that writes and reads it (format: docs/run-folder.md).

A run folder holds ``config.json`` (resolved settings and metadata), ``summary.json`` (headline
numbers), ``tensors.safetensors`` (all tensors, subset axis in bitmask order), PNG figures,
``metrics.json``, ``report.html`` and ``manifest.json`` (the SHA-256 of every other file).
Every file name is defined here, and every file is written by
:func:`regprim.files.atomic_write` (a temporary file renamed into place). A new run is assembled
in a hidden staging folder of its own process beside the target and renamed into place as a
whole (:func:`regprim.storage.folders.write_folder`), under an exclusive lock held for the whole
run;
while its minimal features are being solved, a checkpoint is kept in the hidden sibling
``.NAME.partial``, and running the same command again resumes from it.
:func:`load_run` checks the checksums, the schema of both JSON files, the tensors' shapes and
that they are finite, and names the file and the field of whatever is wrong
(docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from regprim.explanation.run import Run
from regprim.files import Content, atomic_write, safetensors_content, sha256_file
from regprim.storage.folders import (
    MANIFEST,
    lock,
    manifest_content,
    write_folder,
)

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
EDIT = "edit.json"  # the marker of an edit folder (docs/run-folder.md, "Edit folders")
EDIT_FIGURE = "edit.png"
RUN_FIGURES = (TARGET_PNG, BASELINE_PNG, COMPONENTS_PNG)
REQUIRED_TENSORS = ("f", "f0", "code", "image", "baseline_image", "minimal_features", "components")
REQUIRED_COMPACT = (
    *REQUIRED_TENSORS[:5],
    "beta",
    "component_masks",
    "components",
    "heldout_masks",
    "heldout_rel_error",
)
# files that `regprim verify` / `report` / `stability` rewrite (not needed to read a run back)
DERIVED = (METRICS, REPORT, STABILITY, FIG3, FIG4, FIG5, FIG6, FIG7A, FIG7B, FIG8)
CONFIG_FIELDS = {
    "model": str,
    "layer": str,
    "seed": int,
    "grid": list,
    "players": list,
    "n": int,
    "solver": dict,
    "value_range": list,
    "feature_shape": list,
}
SUMMARY_FIELDS = {
    "model": str,
    "layer": str,
    "n": int,
    "players": list,
    "grid": list,
    "salient": list,
    "subsets_meeting_constraint": float,
    "universal_matching_max_rel_residual": float,
}


def reconstruction_png(cells: list[int]) -> str:
    """File name of ``regprim reconstruct --cells CELLS``."""
    return f"reconstruct-{'-'.join(map(str, cells))}.png"


def _json(data: Any) -> str:
    return json.dumps(data, indent=2)


def fingerprint(config: dict[str, Any]) -> str:
    """Hash of the settings that determine the minimal features (to match a checkpoint)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def tensor_hash(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_bytes(n: int, numel: int, denoise: bool = False, storage: str = "full") -> int:
    """At most how many bytes a run's tensors take on disk (float32), plus 1 MiB of figures and
    JSON (64 KiB without figures): minimal features and components of every subset up to 12
    players (twice with noise removal); else, or with ``light`` storage, beta and the component
    list (every non-zero component: up to ``2**n - 1``, a few thousand rows at most)."""
    if storage == "full" and n <= 12:
        return 4 * numel * 2 * 2**n * (2 if denoise else 1) + 2**20
    extra = 2**20 if storage == "full" else 2**16
    return 4 * numel * (n + 5 + min(2**n - 1, 4096)) + 16 * 2**n * (n <= 12) + extra


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
    """Write ``run`` (config, summary, tensors) and ``files`` ({file name: content}) to ``out``
    with :func:`write_folder`; the solver checkpoint goes once the run is in place."""
    out = Path(out)
    own = {
        CONFIG: _json(run.config),
        SUMMARY: _json(run.summary),
        TENSORS: safetensors_content(run.tensors),
    }
    write_folder(out, own | (files or {}), overwrite, CONFIG)
    shutil.rmtree(partial_dir(out), ignore_errors=True)
    run.path = out
    return out


def update_run(run: Run, files: dict[str, Content], remove: tuple[str, ...] = ()) -> None:
    """Add or replace ``files`` in the folder of a written run, each atomically, remove the
    derived files ``remove`` names (a figure a rebuilt report leaves out), and rewrite its
    manifest, under the folder's lock."""
    if run.path is None:
        msg = "this run has no folder; write it with regprim.explain(..., out=FOLDER) first"
        raise ValueError(msg)
    with lock(run.path):
        for name, content in files.items():
            atomic_write(run.path / name, content)
        for name in remove:
            if name in DERIVED:
                (run.path / name).unlink(missing_ok=True)
        atomic_write(run.path / MANIFEST, manifest_content(run.path))


def metrics_file(metrics: list[Any]) -> str:
    from regprim.analysis.scorer import metrics_json

    return _json(metrics_json(metrics))


def stability_file(result: dict[str, Any]) -> str:
    return _json(result)


def read_stability(path: Path) -> dict[str, Any] | None:
    """``stability.json`` of a run folder, when ``regprim stability`` has written one. A damaged
    one is left out with a warning that names it (it must not block ``verify`` and ``report``,
    the commands that repair a run)."""
    file = Path(path) / STABILITY
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        print(
            f"regprim: warning: {file} is damaged ({err}); left out of the report: run "
            f"`regprim stability {path}` again to remake it",
            file=sys.stderr,
        )
        return None


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(
        f"run folder {path} is corrupt or truncated ({why}); rerun `regprim explain` to recreate it"
    )


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((path / name).read_text())
    except ValueError as err:
        raise _corrupt(path, f"{name} does not parse as JSON: {err}") from err
    if not isinstance(data, dict):
        raise _corrupt(path, f"{name} holds a {type(data).__name__}, not an object")
    return data


def _check_fields(path: Path, name: str, data: dict[str, Any], fields: dict[str, type]) -> None:
    for key, kind in fields.items():
        if key not in data:
            raise _corrupt(path, f"{name} lacks the field {key!r}")
        ok = isinstance(data[key], kind) or (kind is float and isinstance(data[key], int))
        if not ok or (kind is int and isinstance(data[key], bool)):
            got = type(data[key]).__name__
            raise _corrupt(path, f"{name} field {key!r} is a {got}, expected {kind.__name__}")


def check_checksums(path: Path, derived: bool = True) -> None:
    """Compare every file with the manifest (``derived=False``: not the files that verify,
    report and stability rewrite)."""
    if not (path / MANIFEST).is_file():
        raise _corrupt(path, f"{MANIFEST} is missing")
    listed = _read_json(path, MANIFEST).get("sha256")
    if not isinstance(listed, dict):
        raise _corrupt(path, f"{MANIFEST} lacks the field 'sha256'")
    for name, digest in listed.items():
        if not derived and name in DERIVED:
            continue
        file = path / name
        if not file.is_file():
            raise _corrupt(path, f"{name} is missing")
        if sha256_file(file) != digest:
            raise _corrupt(path, f"{name} does not match its SHA-256 in {MANIFEST}")


def check_run(path: Path, config: dict, summary: dict, tensors: dict[str, Tensor]) -> None:
    """The schema of a run's JSON files and the shapes and values of its tensors."""
    _check_fields(path, CONFIG, config, CONFIG_FIELDS)
    _check_fields(path, SUMMARY, summary, SUMMARY_FIELDS)
    compact = "component_masks" in tensors
    missing = [k for k in (REQUIRED_COMPACT if compact else REQUIRED_TENSORS) if k not in tensors]
    if missing:
        raise _corrupt(path, f"{TENSORS} lacks {missing}")
    rows, cols = summary["grid"]
    n, players = summary["n"], summary["players"]
    if len(players) != n or not all(isinstance(c, int) and 0 <= c < rows * cols for c in players):
        raise _corrupt(path, f"{SUMMARY} field 'players' {players} is not {n} cells of the grid")
    bad = [k for k in summary["salient"] if not isinstance(k, int) or not 0 < k < 2**n]
    if bad:
        raise _corrupt(
            path, f"{SUMMARY} field 'salient' holds {bad[:5]}, not bitmasks below 2**{n}"
        )
    shape = tuple(tensors["f"].shape)
    if compact:
        m = len(tensors["component_masks"])
        expected = {"f0": shape, "components": (m, *shape), "beta": (n, *shape)}
    else:
        expected = {"f0": shape, "minimal_features": (2**n, *shape), "components": (2**n, *shape)}
    for key, want in expected.items():
        if tuple(tensors[key].shape) != want:
            raise _corrupt(path, f"{key} has shape {tuple(tensors[key].shape)}, expected {want}")
    if tensors["image"].shape != tensors["baseline_image"].shape or tensors["image"].dim() != 3:
        raise _corrupt(path, "image and baseline_image must both be (C, H, W)")
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise _corrupt(path, f"tensor {key!r} holds NaN or inf values")


def load_run(path: str | Path, derived: bool = True) -> Run:
    """Read a run folder written by :func:`write_run`, checking it (module docstring).

    Args:
        derived: also check (and read) the files that ``regprim verify``, ``report`` and
            ``stability`` rewrite; those commands pass False, so that a damaged
            ``metrics.json`` does not block the command that rewrites it.
    """
    path = Path(path)
    if not path.is_dir():
        msg = f"run folder {path} does not exist; give the --out folder of `regprim explain`"
        raise FileNotFoundError(msg)
    if not any((path / name).exists() for name in (CONFIG, SUMMARY, TENSORS, MANIFEST)):
        runs = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file())
        held = f"; it holds the runs {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}"
        msg = (
            f"{path} is not a run folder (no {CONFIG}, {SUMMARY} or {TENSORS})"
            f"{held if runs else ''}; give the --out folder of `regprim explain`"
        )
        raise FileNotFoundError(msg)
    for name in (CONFIG, SUMMARY, TENSORS):
        if not (path / name).is_file():
            raise _corrupt(path, f"{name} is missing")
    check_checksums(path, derived)
    unlisted = [
        n for n in (CONFIG, SUMMARY, TENSORS) if n not in _read_json(path, MANIFEST)["sha256"]
    ]
    if unlisted:  # a manifest with an entry removed would leave that file unchecked
        raise _corrupt(path, f"{MANIFEST} does not list {', '.join(unlisted)}")
    config, summary = _read_json(path, CONFIG), _read_json(path, SUMMARY)
    try:
        tensors = load_file(path / TENSORS)
    except Exception as err:
        raise _corrupt(path, f"{TENSORS} does not load: {err}") from err
    check_run(path, config, summary, tensors)
    metrics = None
    if derived and (path / METRICS).is_file():
        from regprim.analysis.scorer import Metric

        try:
            metrics = [Metric(**m) for m in _read_json(path, METRICS)["metrics"]]
        except (KeyError, TypeError) as err:
            raise _corrupt(path, f"{METRICS} does not parse: {err}") from err
    return Run(config=config, summary=summary, tensors=tensors, path=path, metrics=metrics)


EDIT_FIELDS = {"model": str, "layer": str, "players": list, "operations": list, "cells": list}


def load_edit(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """An edit folder read back (docs/run-folder.md, "Edit folders"), checked as a run is: the
    manifest's SHA-256 of every file, the fields of ``edit.json``, finite tensors. Returns
    ``(edit.json, tensors)``."""
    path = Path(path)
    check_checksums(path)
    record = _read_json(path, EDIT)
    _check_fields(path, EDIT, record, EDIT_FIELDS)
    tensors = load_file(path / TENSORS)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise _corrupt(path, f"{TENSORS} holds NaN or infinity in {bad}")
    return record, tensors
