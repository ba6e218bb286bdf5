"""Settings of a run: :class:`ExplainConfig` and its :class:`SolverConfig`.

Every field is documented in its class docstring (``Args:``); :func:`field_docs` reads those
texts, and the command line (:mod:`regprim.app.cli`) builds its options, defaults and help from the
dataclasses, so no default is written twice. Choices and command-line names live in the fields'
metadata. A resolved config is saved with every run as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_N = 9
DEFAULT_MODEL = "dcgan-faces"  # regprim models lists the others
DENSE_MAX_N = 12  # more players: runs keep a list of components, not every subset
SOLVER_METHODS = ("or", "paper", "reach")
OPTIMIZERS = ("lbfgs", "adam")
SPARSITY = ("l1-delta", "l1")
REDUCTIONS = ("sum", "mean")
WARM_STARTS = ("parent", "full")
PRECISIONS = ("float32", "bfloat16", "float16")
PLAYER_RULES = ("center", "foreground", "random")
SALIENT_RULES = ("tau", "top", "removal")
STORAGES = ("full", "light")
SUBSET_WEIGHTS = ("auto", "subsets", "sizes")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``value`` and the valid ``choices``."""
    if value not in choices:
        msg = f"{what} {value!r} is not one of {list(choices)}"
        raise ValueError(msg)


def choice(default: str, choices: tuple[str, ...]) -> Any:
    """A string field restricted to ``choices`` (checked in ``__post_init__`` and by the CLI)."""
    return field(default=default, metadata={"choices": choices})


def read_by(default: Any, *solvers: str, choices: tuple[str, ...] | None = None) -> Any:
    """A :class:`SolverConfig` field and the solvers that read it (metadata ``solvers``): the
    one place that says so. ``--help`` files the field under that solver (or "every solver"),
    and a run's report shows the fields of the solver that ran (:func:`solver_settings`)."""
    meta: dict[str, Any] = {"solvers": solvers or SOLVER_METHODS}
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def solver_settings(method: str) -> tuple[str, ...]:
    """The :class:`SolverConfig` fields the solver ``method`` reads, in field order."""
    return tuple(
        f.name
        for f in dataclasses.fields(SolverConfig)
        if f.name != "method" and method in f.metadata["solvers"]
    )


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Args:`` section of a dataclass docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    docs: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        m = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
        if m:
            name = m.group(1)
            docs[name] = m.group(2).strip()
        elif name and line.startswith("        "):
            docs[name] += " " + line.strip()
        elif line.strip():
            name = None
    return docs


def _positive(owner: str, name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        msg = f"{owner} {name}={value} must be a positive finite number"
        raise ValueError(msg)


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the minimal-feature solver (defaults chosen by measurement,
    docs/method-choices.md).

    Args:
        method: which solver computes the minimal features u(S) (docs/method-choices.md):
            ``or`` = OR-structured minimal features (one set of unknowns per player for all
            subsets; the default); ``paper`` = every subset solved alone, as the paper does
            (Eq. 8); ``reach`` = the receptive-field reference (no optimisation).
        or_steps: projected Adam steps of the ``or`` solver.
        or_batch: subsets per step of the ``or`` solver (all of them when there are fewer).
        or_lr: initial Adam step on beta (``or``); a cosine schedule takes it to zero.
        or_init: start of beta on each number's reach set (``or``; 0 elsewhere).
        or_snap: at the end, every beta within this distance of 0 or 1 is set to it (``or``).
        or_gtol: the ``or`` solve counts as converged when the KKT residual of beta (its
            projected gradient over the sparsity term's gradient) is below this.
        or_exclusive: weight of the exclusivity term of the ``or`` objective, relative to the
            reconstruction term's (``lam``): what f keeps once u({i}) is removed should render
            cell i as the baseline does (docs/method.md, "Exclusivity"); 0 = off.
        subset_weights: how the ``or`` objective averages over subsets: ``subsets`` = every
            subset alike (the paper's sum); ``sizes`` = every subset size alike (else, for
            large n, single cells are almost never drawn); ``auto`` = ``subsets`` up to 12
            players, ``sizes`` above.
        optimizer: how the ``paper`` solver minimises each subset: ``lbfgs`` = projected
            L-BFGS until it converges (``ftol``, ``gtol``) or reaches ``max_steps``; ``adam`` =
            projected Adam with a cosine schedule for exactly ``steps`` (regprim 0.1's solver).
        ftol: convergence: the relative objective decrease of the last step is below it.
        gtol: convergence: the KKT residual (RMS of the projected diagonal-Newton step, in units
            of alpha) is below it.
        max_steps: step cap of ``lbfgs`` per subset; a subset that reaches it is "capped".
        steps: Adam steps per subset (``adam``).
        lr: initial Adam step on alpha; a cosine schedule takes it to zero.
        lam: lambda, the weight of the masked reconstruction error (the paper: 1e4).
        sparsity: the L1 term: ``l1-delta`` = ||u - f0||_1 (the change from the baseline),
            ``l1`` = ||u||_1 (the paper's literal term).
        reduction: ``sum`` = raw sums as the paper writes them; ``mean`` divides the L1 term
            by D and the squared error by the number of masked values.
        chunk: subsets optimised together in one batch (0: chosen from free GPU memory).
        constraint: a subset meets the reconstruction constraint when its masked squared error
            is below this fraction of the baseline image's error on the same cells.
        warm_start: start of each u(S) (``paper``): ``parent`` = the solution of S plus its
            lowest missing player; ``full`` = u(N), as the paper does.
        full_steps: Adam steps for u(N), solved first from alpha = 1 (``adam``).
        precision: number format of the generator passes inside the loop (``bfloat16``,
            ``float16``: faster on some hardware, less exact).
        init_jitter: perturbation of the solver's start (``paper``: u(N)'s alpha = 1 - jitter *
            U(0, 1); ``or``: beta times 1 - jitter * U(0, 1)), for stability studies; 0 = none.
        perturb_seed: seed of ``init_jitter``, of ``ExplainConfig.f0_noise`` and of the ``or``
            solver's subset sampling.
        crop: optimise and render only the window of feature positions that reaches the
            players' pixels (used only where a check shows it is exact).
        or_cell_rows: play the ``or`` objective per cell where each cell's pixels provably
            come from a crop of the feature (n <= 12, with ``crop``): each step renders this
            many crops around each player's cell, drawn by their weight in the objective,
            instead of ``or_batch`` whole subsets (docs/method-choices.md, "The game per
            cell"); 0 = whole renders always.
    """

    method: str = field(
        default="or", metadata={"choices": SOLVER_METHODS, "cli": "solver", "solvers": ()}
    )
    or_steps: int = read_by(300, "or")
    or_batch: int = read_by(32, "or")
    or_lr: float = read_by(0.2, "or")
    or_init: float = read_by(0.9, "or")
    or_snap: float = read_by(0.02, "or")
    or_gtol: float = read_by(0.2, "or")
    or_exclusive: float = read_by(0.03, "or")
    subset_weights: str = read_by("auto", "or", choices=SUBSET_WEIGHTS)
    optimizer: str = read_by("lbfgs", "paper", choices=OPTIMIZERS)
    ftol: float = read_by(3e-4, "paper")
    gtol: float = read_by(1e-4, "paper")
    max_steps: int = read_by(30, "paper")
    steps: int = read_by(50, "paper")
    lr: float = read_by(0.05, "paper")
    lam: float = read_by(1e4)  # the objective's: every solver
    sparsity: str = read_by("l1-delta", choices=SPARSITY)
    reduction: str = read_by("sum", choices=REDUCTIONS)
    chunk: int = read_by(32)
    constraint: float = read_by(0.1)
    warm_start: str = read_by("parent", "paper", choices=WARM_STARTS)
    full_steps: int = read_by(200, "paper")
    precision: str = read_by("float32", choices=PRECISIONS)
    init_jitter: float = read_by(0.0, "or", "paper")
    perturb_seed: int = read_by(0, "or", "paper")
    crop: bool = read_by(True)
    or_cell_rows: int = read_by(6, "or")

    def __post_init__(self) -> None:
        check_fields(self, "solver")
        if self.chunk < 0:
            msg = f"solver chunk={self.chunk} must be >= 0 (0 = chosen from free memory)"
            raise ValueError(msg)
        if self.or_cell_rows < 0:
            msg = (
                f"solver or_cell_rows={self.or_cell_rows} must be >= 0 (crops per cell and "
                "step, e.g. 6; 0 = whole renders)"
            )
            raise ValueError(msg)
        for name in ("steps", "full_steps", "max_steps", "or_steps", "or_batch"):
            if getattr(self, name) < 1:
                msg = f"solver {name}={getattr(self, name)} must be at least 1"
                raise ValueError(msg)
        if not (math.isfinite(self.or_exclusive) and self.or_exclusive >= 0):
            msg = (
                f"solver or_exclusive={self.or_exclusive} must be a finite number >= 0 "
                "(0 = no exclusivity term)"
            )
            raise ValueError(msg)
        for name in ("or_init", "or_snap"):
            if not 0 <= getattr(self, name) <= 1:
                msg = f"solver {name}={getattr(self, name)} must be in [0, 1]"
                raise ValueError(msg)
        if not 0 <= self.init_jitter < 1:
            msg = f"init_jitter={self.init_jitter} must be in [0, 1)"
            raise ValueError(msg)
        for name in ("lr", "lam", "constraint", "ftol", "gtol", "or_lr", "or_gtol"):
            _positive("solver", name, getattr(self, name))
        if self.method in ("or", "reach") and self.sparsity != "l1-delta":
            msg = (
                f"solver {self.method!r} needs sparsity 'l1-delta' (its minimal features are "
                f"f0 + alpha * (f - f0) with alpha(empty) = 0); use --solver paper for "
                f"sparsity {self.sparsity!r}"
            )
            raise ValueError(msg)


@dataclass
class ExplainConfig:
    """Everything that determines a run; saved, resolved, as ``config.json``.

    Args:
        model: a built-in model (``regprim models``) or ``path/to/file.py:function`` /
            ``package.module:function`` returning a ``regprim.SplitGenerator``.
        layer: the layer to cut the generator at (default: the model's default); ``auto``:
            sweep the model's cuts and keep the most exclusive converged one
            (``regprim.explain_auto``, the CLI's ``--layer auto``; the sweep is kept in
            ``OUT.sweep``).
        weights: weights file or folder for the model (BigGAN: a folder; ``random``: a random
            initialisation).
        prompt: the text prompt of a ``diffusers:DIR`` model, encoded by the folder's own text
            encoders (the same as its ``?prompt=``; default: the empty prompt).
        negative_prompt: the negative prompt of a ``diffusers:DIR`` model (the unconditional
            pass of its guidance; the same as ``?negative_prompt=``).
        seed: seed of the target image's code (with ``image``: of the codes the fit starts
            from).
        image: a photo (PNG, JPEG) to explain instead of a generated image: the run explains
            the generator's image nearest to it, found by fitting the code
            (:mod:`regprim.solvers.problem.photo`), and says how near (``image_fit``).
        class_index: class of the target image, by index or name (conditional models).
        grid: rows x cols of the grid of cells over the image.
        players: the player cells (grid ids, ``row * cols + col``) in bit order, or ``all``
            (every cell: the whole grid); when not given, ``n`` cells chosen by
            ``player_rule``.
        n: number of players chosen by ``player_rule`` when ``players`` is not given (9 when
            neither is given).
        player_rule: how ``n`` players are chosen: ``center`` = the cells nearest the image
            centre, ``foreground`` = the cells most changed from the baseline image,
            ``random``.
        player_seed: seed of the ``random`` player rule.
        baseline_count: codes averaged for the baseline feature f0.
        baseline_seed: seed of those codes.
        solver: settings of the minimal-feature solver (:class:`SolverConfig`).
        salient_rule: which components are salient: ``tau`` = norm above ``salient_tau`` of
            ||f - f0||; ``top`` = the ``salient_top`` fraction with the largest norms;
            ``removal`` = removed by decreasing norm until the image matches the baseline.
        salient_tau: threshold of the ``tau`` rule, relative to ||f - f0||_2.
        salient_top: fraction kept by the ``top`` rule (Appendix H: 0.6).
        removal_threshold: the ``removal`` rule stops when the squared distance to the
            baseline image is below this fraction of the starting one.
        denoise: remove noise from the minimal features (Appendix G) and use the denoised
            components.
        denoise_tau: noise bound per number, relative to |u(N) - f0|.
        denoise_steps: projected Adam steps of the noise removal.
        f0_noise: Gaussian noise added to f0, in standard deviations of f0 (stability studies).
        top_figure: components drawn in ``components.png``.
        device: ``cpu`` or ``cuda`` (``cuda:1``, ...).
        memory_budget_gb: memory the run may use, in GiB (default: what the machine has
            available).
        storage: what the run folder keeps: ``full`` = the minimal features and components of
            every subset (up to 12 players), the paper's figures and report.html; ``light`` =
            beta and the non-zero components with every subset's check, metrics.json and no
            figures or report (for datasets: a tenth of the bytes or less; docs/run-folder.md).
    """

    model: str = DEFAULT_MODEL
    layer: str | None = None
    weights: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int = 0
    image: str | None = None
    class_index: int | str | None = field(default=None, metadata={"cli": "class"})
    grid: tuple[int, int] = (6, 6)
    players: list[int] | str | None = None
    n: int | None = None
    player_rule: str = choice("center", PLAYER_RULES)
    player_seed: int = 0
    baseline_count: int = 1000
    baseline_seed: int = 12345
    solver: SolverConfig = field(default_factory=SolverConfig)
    salient_rule: str = choice("tau", SALIENT_RULES)
    salient_tau: float = 0.05
    salient_top: float = 0.6
    removal_threshold: float = 0.1
    denoise: bool = False
    denoise_tau: float = 0.04
    denoise_steps: int = 100
    f0_noise: float = 0.0
    top_figure: int = 8
    device: str = "cpu"
    memory_budget_gb: float | None = None
    storage: str = choice("full", STORAGES)

    def __post_init__(self) -> None:
        if isinstance(self.solver, dict):
            self.solver = SolverConfig(**self.solver)
        self.grid = tuple(self.grid)  # type: ignore[assignment]
        if self.players == "all":
            self.players = list(range(self.grid[0] * self.grid[1]))
        check_fields(self, "")
        if self.players is not None:
            if not self.players:
                msg = "no player cells given; list them, e.g. players=[14, 15] (--players 14,15)"
                raise ValueError(msg)
            if self.n is not None and self.n != len(self.players):
                msg = (
                    f"n={self.n} and players {list(self.players)} disagree; give the players "
                    "or n, not both"
                )
                raise ValueError(msg)
        elif self.n is not None and self.n < 1:
            msg = f"n={self.n} must be at least 1 player"
            raise ValueError(msg)
        self._check_ranges()
        check_device(self.device)
        if (self.prompt is not None or self.negative_prompt is not None) and not (
            self.model.startswith("diffusers:")
        ):
            msg = (
                f"a prompt is for diffusers:DIR models; {self.model!r} takes none (drop --prompt "
                "and --negative-prompt)"
            )
            raise ValueError(msg)
        if self.denoise and self.players_count > DENSE_MAX_N:
            msg = (
                f"noise removal works on the minimal features of every subset; with "
                f"{self.players_count} players there are 2**{self.players_count}: drop --denoise "
                f"or use at most {DENSE_MAX_N} players"
            )
            raise ValueError(msg)
        if self.storage == "light" and (self.denoise or self.solver.method == "paper"):
            msg = "storage 'light' keeps beta and the non-zero components; " + (
                "drop --denoise (its tensors are dense)"
                if self.denoise
                else "the paper solver has no beta: use --storage full or --solver or"
            )
            raise ValueError(msg)

    def _check_ranges(self) -> None:
        ranges = {
            "salient_tau": (0.0, math.inf, "a fraction of ||f - f0||, e.g. 0.05"),
            "salient_top": (1e-12, 1.0, "a fraction in (0, 1], e.g. 0.6"),
            "removal_threshold": (1e-12, 1 - 1e-12, "a fraction in (0, 1), e.g. 0.1"),
            "denoise_tau": (0.0, 1 - 1e-12, "a fraction in [0, 1), e.g. 0.04"),
            "f0_noise": (0.0, math.inf, "standard deviations of f0, e.g. 0.01"),
        }
        for name, (low, high, hint) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and low <= value <= high):
                msg = f"{name.replace('_', ' ')} {value} is out of range: {hint}"
                raise ValueError(msg)
        for name in ("denoise_steps", "baseline_count"):
            if getattr(self, name) < 1:
                msg = f"{name.replace('_', ' ')} {getattr(self, name)} must be at least 1"
                raise ValueError(msg)
        if self.top_figure < 0:
            msg = f"top_figure {self.top_figure} must be >= 0"
            raise ValueError(msg)
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            msg = (
                f"memory budget {self.memory_budget_gb} GiB must be positive; leave it out to "
                "use what the machine has"
            )
            raise ValueError(msg)

    @property
    def players_count(self) -> int:
        """n: the number of players (the given ones, or ``n``, default 9)."""
        return len(self.players) if self.players is not None else (self.n or DEFAULT_N)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainConfig:
        """The settings of a saved ``config.json`` (metadata keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_device(device: str) -> None:
    """A clear error for a device that is not one, or a CUDA device this build cannot use."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        msg = f"device {device!r} is not a torch device; use cpu or cuda (cuda:1, ...)"
        raise ValueError(msg) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        msg = (
            f"device {device!r} asked for, but this PyTorch ({torch.__version__}) sees no CUDA "
            "GPU; use --device cpu, or install a CUDA build of torch (make ... TORCH_SPEC=torch)"
        )
        raise ValueError(msg)


def check_fields(config: Any, owner: str) -> None:
    """Check every field with ``choices`` metadata."""
    for f in dataclasses.fields(config):
        if "choices" in f.metadata:
            what = f"{owner} {f.name.replace('_', ' ')}".strip()
            check_choice(what, getattr(config, f.name), f.metadata["choices"])
