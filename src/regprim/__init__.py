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
    run, run_folder    the result object and the folder it is written to
    explain            the whole pipeline, as named stages
"""

from regprim.config import ExplainConfig, SolverConfig
from regprim.explain import explain
from regprim.generator import HookSplit, SplitGenerator, split_at, split_sequential
from regprim.interactions import or_interactions, universal_matching_residual
from regprim.models import MODELS, load_model
from regprim.run import Run
from regprim.run_folder import load_run
from regprim.target import Target
from regprim.version import __version__

__all__ = [
    "MODELS",
    "ExplainConfig",
    "HookSplit",
    "Run",
    "SolverConfig",
    "SplitGenerator",
    "Target",
    "__version__",
    "explain",
    "load_model",
    "load_run",
    "or_interactions",
    "split_at",
    "split_sequential",
    "universal_matching_residual",
]
