"""What a run records beside its tensors: the headline numbers of ``summary.json`` and the
machine facts of ``config.json`` (docs/run-folder.md)."""

from __future__ import annotations

import os
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from regprim.config import ExplainConfig
from regprim.core.components import ComponentTable
from regprim.core.regions import cells_of
from regprim.generators.base import SplitGenerator
from regprim.solvers import MinimalFeatures, convergence_note
from regprim.solvers.problem.photo import NEAR
from regprim.solvers.problem.target import Target
from regprim.version import __version__


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def summarise(
    cfg: ExplainConfig,
    target: Target,
    mf: MinimalFeatures,
    tensors: dict[str, Tensor],
    table: ComponentTable,
    rules: dict[str, Tensor],
    denoised: dict[str, Any],
    start: float,
) -> dict[str, Any]:
    """The headline numbers of ``summary.json`` (docs/run-folder.md)."""
    gen, n, solver = target.gen, target.n, cfg.solver
    salient = rules[cfg.salient_rule]
    summary = {
        "model": gen.name,
        "layer": gen.layer,
        "feature_shape": list(target.feature_shape),
        "grid": list(cfg.grid),
        "players": target.players,
        "n": n,
        "class_index": target.class_index,
        "sparsity": solver.sparsity,
        "reduction": solver.reduction,
        "universal_matching_max_rel_residual": float(tensors["universal_matching_residual"].max()),
        "constraint": solver.constraint,
        "components_used": "denoised" if cfg.denoise else "raw",
        "denoise": denoised,
        "salient_rule": cfg.salient_rule,
        "salient_counts": {rule: len(ks) for rule, ks in rules.items()},
        "salient": salient.tolist(),
        "salient_cells": [cells_of(k, target.players) for k in salient.tolist()],
        "salient_norms": [table.norm(k) for k in salient.tolist()],
        "feature_change_norm": float((target.f - target.f0).norm()),
        "split_check": target.split_check,
        **({"image_fit": target.fit} if target.fit else {}),
        **mf.summary(),
        "device": str(gen.device),
        "wall_seconds": time.perf_counter() - start,
        "peak_memory_bytes": peak_memory_bytes(gen.device),
    }
    summary["warnings"] = [
        *summary["warnings"],
        *split_warnings(gen, cfg, summary),
        *photo_warnings(target.fit),
    ]
    return summary


def photo_warnings(fit: dict[str, Any]) -> list[str]:
    """A photo the generator does not make: the explanation is of its nearest image."""
    if not fit or fit["rms_residual"] <= NEAR:
        return []
    return [
        f"the photo is not an image this generator makes: its nearest image differs by an RMS "
        f"{fit['rms_residual']:.3f} of the value range (above {NEAR}); the primitives explain "
        "that nearest image (target.png shows both)"
    ]


def split_warnings(gen: SplitGenerator, cfg: ExplainConfig, summary: dict[str, Any]) -> list[str]:
    """What can make this explanation mislead beyond the subsets' errors: a cut the code
    reaches around (held values), and a solve stopped before its convergence test held."""
    found = [f"{gen.around_cut}: the primitives explain f given those held values"] * bool(
        gen.around_cut
    )
    note = convergence_note(cfg.solver, summary)
    return found + ([f"the solve did not converge: {note}"] if note else [])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rounding_path() -> dict[str, Any]:
    """What decides how this process rounds a float sum: the CPU, the SIMD kernels torch
    dispatches to (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY``
    overrides), the instruction sets oneDNN and MKL are capped at (``ONEDNN_MAX_CPU_ISA``,
    ``MKL_ENABLE_INSTRUCTIONS``; "native" when unset), the thread count and the torch version.
    Two processes agree bit for bit only when all of these agree (docs/reliability.md)."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "native"),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def run_metadata(target: Target) -> dict[str, Any]:
    """What ``config.json`` records beside the settings (docs/reliability.md: results agree
    to about 1e-4 across CPUs and thread counts, bit for bit only on the same machine and
    thread count)."""
    return {
        "regprim_version": __version__,
        **rounding_path(),
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_shape": list(target.feature_shape),
        "code_shape": list(target.gen.code_shape),
        "value_range": list(target.gen.value_range),
        "model_info": target.gen.info(),
    }
