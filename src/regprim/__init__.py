"""regprim: disentangle regional primitives of image generators.

The pipeline reads as the paper does, one module per step::

    generator          split generator  z --d--> f --g--> x
    regions            grid cells, players, subset masks
    baseline           f0 = E_z[d(z)]
    minimal_features   u(S) for every subset S of the players (Eq. 8)
    interactions       OR interactions Delta f_k = I_or(S_k) (Eq. 10), universal matching
    salient            salient components (Algorithm 1, Appendix H)
    reconstruction     Algorithm 2
    explain            the whole pipeline -> run_folder (figures from figures)
"""

__version__ = "0.1.0"

from regprim.explain import ExplainConfig, explain  # noqa: E402
from regprim.generator import (  # noqa: E402
    HookSplit,
    SplitGenerator,
    split_at,
    split_sequential,
)
from regprim.interactions import or_interactions, universal_matching_residual  # noqa: E402
from regprim.minimal_features import SolverConfig  # noqa: E402
from regprim.models import MODELS, load_model  # noqa: E402
from regprim.reconstruction import reconstruct, reconstruct_run  # noqa: E402
from regprim.run_folder import Run, load_run  # noqa: E402

__all__ = [
    "MODELS",
    "ExplainConfig",
    "HookSplit",
    "Run",
    "SolverConfig",
    "SplitGenerator",
    "explain",
    "load_model",
    "load_run",
    "or_interactions",
    "reconstruct",
    "reconstruct_run",
    "split_at",
    "split_sequential",
    "universal_matching_residual",
]
