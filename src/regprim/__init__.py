"""regprim: disentangle regional primitives of image generators.

The pipeline reads as the paper does; each package is one floor of it, and imports only the
floors below (``make lint`` enforces it with import-linter; docs/architecture.md)::

    config, files, version   settings, atomic writes and hashes, the version
    core/          tensors only: regions (grid, players, masks), interactions (Eq. 10),
                   components (the table every solver returns), salient (Algorithm 1),
                   reconstruction (Algorithm 2)
    generators/    the split z --d--> f --g--> x: base, hooks, registry and the model families
    solvers/       minimal features u(S) (Eq. 8): OR-structured (default), the paper's, the
                   reach reference; noise removal (Appendix G)
    explanation/   one explanation: its target (code, f, f0, x), baseline, summary and the Run
    analysis/      metrics: each claim of the paper as a number
    storage/       run folders and regprim's folders: atomic, locked, checksummed
    present/       figures, report.html, the dataset report
    control/       acting on the primitives: edits, transplants, inversion
    pipeline/      explain end to end, the dry-run plan, stability, many images, sweeps of cuts
    app/           the command line and the live explorer

Every name below is imported on first use, so ``import regprim.config`` (or any one module)
loads only what that module needs.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from regprim.version import __version__

# name -> module: imported on first use
_EXPORTS = {
    "ExplainConfig": "regprim.config",
    "SolverConfig": "regprim.config",
    "ComponentTable": "regprim.core.components",
    "or_interactions": "regprim.core.interactions",
    "universal_matching_residual": "regprim.core.interactions",
    "SplitGenerator": "regprim.generators.base",
    "split_sequential": "regprim.generators.base",
    "HookSplit": "regprim.generators.hooks",
    "split_at": "regprim.generators.hooks",
    "MODELS": "regprim.generators.registry",
    "load_model": "regprim.generators.registry",
    "Run": "regprim.explanation.run",
    "Target": "regprim.solvers.problem.target",
    "evaluate": "regprim.analysis.metrics",
    "load_run": "regprim.storage.run_folder",
    "Edit": "regprim.control.edit",
    "EditResult": "regprim.control.edit",
    "apply": "regprim.control.edit",
    "save_edit": "regprim.control.edit",
    "invert": "regprim.control.inversion",
    "explain": "regprim.pipeline.explain",
    "sweep": "regprim.pipeline.sweep",
    "explain_auto": "regprim.pipeline.sweep",
}

if TYPE_CHECKING:
    from regprim.analysis.metrics import evaluate
    from regprim.config import ExplainConfig, SolverConfig
    from regprim.control.edit import Edit, EditResult, apply, save_edit
    from regprim.control.inversion import invert
    from regprim.core.components import ComponentTable
    from regprim.core.interactions import or_interactions, universal_matching_residual
    from regprim.explanation.run import Run
    from regprim.generators.base import SplitGenerator, split_sequential
    from regprim.generators.hooks import HookSplit, split_at
    from regprim.generators.registry import MODELS, load_model
    from regprim.pipeline.explain import explain
    from regprim.pipeline.sweep import explain_auto, sweep
    from regprim.solvers.problem.target import Target
    from regprim.storage.run_folder import load_run


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    msg = f"module 'regprim' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ComponentTable",
    "Edit",
    "EditResult",
    "ExplainConfig",
    "HookSplit",
    "MODELS",
    "Run",
    "SolverConfig",
    "SplitGenerator",
    "Target",
    "__version__",
    "apply",
    "evaluate",
    "explain",
    "explain_auto",
    "invert",
    "load_model",
    "load_run",
    "or_interactions",
    "save_edit",
    "split_at",
    "split_sequential",
    "sweep",
    "universal_matching_residual",
]
