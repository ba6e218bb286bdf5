"""regprim: disentangle regional primitives of image generators.

The pipeline reads as the paper does, one module per step (docs/architecture.md)::

    generator          split generator  z --d--> f --g--> x
    regions            grid cells, players, subset masks
    baseline           f0 = E_z[d(z)]
    target             the image to explain: code, f, f0, x, grid, players
    solvers/           minimal features u(S) (Eq. 8): the paper's per-subset solver, ...
    interactions       OR interactions Delta f_k = I_or(S_k) (Eq. 10), universal matching
    denoise            noise removal (Appendix G)
    salient            salient components (Algorithm 1, Appendix H)
    reconstruction     Algorithm 2
    metrics            faithfulness metrics (each claim of the paper as a number)
    figures, report    PNG figures and one offline report.html
    components         the component table every solver returns
    run, run_folder    the result object and the folder it is written to
    explain            the whole pipeline, as named stages
    edit, inversion    acting on the primitives: edits, transplants, the code of an edit
    serve              the live explorer (regprim serve)
"""

from importlib import import_module
from typing import TYPE_CHECKING

from regprim.explain import explain  # a function named like its module: imported at once
from regprim.version import __version__

# name -> module: imported on first use, so that `import regprim.solvers.or_structured` (or the
# config alone) loads no model code
_EXPORTS = {
    "ExplainConfig": "regprim.config",
    "SolverConfig": "regprim.config",
    "ComponentTable": "regprim.components",
    "Edit": "regprim.edit",
    "invert": "regprim.inversion",
    "HookSplit": "regprim.hook_split",
    "SplitGenerator": "regprim.generator",
    "split_at": "regprim.hook_split",
    "split_sequential": "regprim.generator",
    "or_interactions": "regprim.interactions",
    "universal_matching_residual": "regprim.interactions",
    "MODELS": "regprim.models",
    "load_model": "regprim.models",
    "Run": "regprim.run",
    "load_run": "regprim.run_folder",
    "Target": "regprim.target",
}

if TYPE_CHECKING:
    from regprim.components import ComponentTable
    from regprim.config import ExplainConfig, SolverConfig
    from regprim.edit import Edit
    from regprim.generator import SplitGenerator, split_sequential
    from regprim.hook_split import HookSplit, split_at
    from regprim.interactions import or_interactions, universal_matching_residual
    from regprim.inversion import invert
    from regprim.models import MODELS, load_model
    from regprim.run import Run
    from regprim.run_folder import load_run
    from regprim.target import Target


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    msg = f"module 'regprim' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "MODELS",
    "ComponentTable",
    "Edit",
    "ExplainConfig",
    "HookSplit",
    "Run",
    "SolverConfig",
    "SplitGenerator",
    "Target",
    "__version__",
    "explain",
    "invert",
    "load_model",
    "load_run",
    "or_interactions",
    "split_at",
    "split_sequential",
    "universal_matching_residual",
]
