"""The pipeline, in the paper's order: split generator -> regions -> baseline -> minimal features
-> OR interactions -> salient components -> verification -> figures -> run folder."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

import regprim
from regprim.baseline import baseline
from regprim.denoise import remove_noise
from regprim.figures import components_figure, image_figure, target_figure
from regprim.generator import SplitGenerator
from regprim.interactions import or_interactions, universal_matching_residual
from regprim.minimal_features import (
    Problem,
    SolverConfig,
    check_choice,
    solve_minimal_features,
)
from regprim.models import DEFAULT_MODEL, load_model
from regprim.regions import (
    PLAYER_RULES,
    Grid,
    center_players,
    foreground_players,
    random_players,
)
from regprim.report import write_verification
from regprim.run_folder import (
    Run,
    check_output,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    write_run,
)
from regprim.salient import SALIENT_RULES, component_norms, removal_salient, select_salient
from regprim.verification import verify as verify_run


@dataclass
class ExplainConfig:
    """Everything that determines a run; saved, resolved, as ``config.json``."""

    model: str = DEFAULT_MODEL
    layer: str | None = None
    weights: str | None = None
    seed: int = 0
    class_index: int | str | None = None
    grid: tuple[int, int] = (6, 6)
    players: list[int] | None = None
    n: int = 9
    player_rule: str = "center"
    player_seed: int = 0
    baseline_count: int = 1000
    baseline_seed: int = 12345
    solver: SolverConfig = field(default_factory=SolverConfig)
    salient_rule: str = "tau"
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

    def __post_init__(self) -> None:
        if isinstance(self.solver, dict):
            self.solver = SolverConfig(**self.solver)
        self.grid = tuple(self.grid)  # type: ignore[assignment]
        check_choice("player rule", self.player_rule, PLAYER_RULES)
        check_choice("salient rule", self.salient_rule, SALIENT_RULES)
        if self.players is None and self.n < 1:
            msg = f"n={self.n} must be at least 1 player"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainConfig:
        """The settings of a saved ``config.json`` (metadata keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (physical memory where that is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(n: int, feature_numel: int, budget_gb: float | None) -> None:
    """Refuse an ``n`` whose ``2**n x D`` tensors would not fit in memory."""
    # minimal features, solver alphas, components and one transform temporary, float32
    need = 4 * (2**n) * feature_numel * 4
    have = int(budget_gb * 2**30) if budget_gb else available_memory_bytes()
    if need > have:
        msg = (
            f"n={n} needs about {need / 2**30:.1f} GiB for its 2**{n} x {feature_numel} tensors, "
            f"more than the {have / 2**30:.1f} GiB available; use a smaller n "
            f"(each player fewer halves it) or an earlier, smaller layer"
        )
        raise MemoryError(msg)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def check_finite(name: str, t: torch.Tensor, gen: SplitGenerator) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        msg = (
            f"{name} of {gen.name}/{gen.layer} has {bad} NaN or inf values; "
            "check the model's weights or choose another seed or layer"
        )
        raise ValueError(msg)


def choose_players(cfg: ExplainConfig, grid: Grid, x, baseline_image) -> list[int]:
    if cfg.players is not None:
        return grid.check_cells(list(cfg.players), "player cells")
    if not 1 <= cfg.n <= grid.cells:
        msg = f"n={cfg.n} players do not fit a grid of {grid.cells} cells; use 1..{grid.cells}"
        raise ValueError(msg)
    if cfg.player_rule == "center":
        return center_players(grid, cfg.n)
    if cfg.player_rule == "foreground":
        return foreground_players(x, baseline_image, grid, cfg.n)
    return random_players(grid, cfg.n, cfg.player_seed)


def explain(
    cfg: ExplainConfig | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    generator: SplitGenerator | None = None,
    verify: bool = True,
    checkpoint_every: float = 20.0,
) -> Run:
    """Disentangle the feature of one generated image into regional primitives.

    Args:
        cfg: settings (defaults: ``dcgan-faces``, 6x6 grid, the 9 centre cells as players).
        out: run folder to write (atomically); None keeps the run in memory only.
        overwrite: replace a run already in ``out``.
        generator: an already built split generator (``cfg.model`` then only names it).
        verify: also compute the faithfulness metrics, the paper's figures and report.html
            (written into ``out``; see :mod:`regprim.report`).
        checkpoint_every: seconds between checkpoints of the solver state in ``out`` (an
            interrupted run loses at most that much work; each checkpoint writes the whole
            ``2**n x D`` state, so not after every chunk).
    """
    cfg = cfg or ExplainConfig()
    start = time.perf_counter()
    out = Path(out) if out is not None else None
    if out is not None:
        check_output(out, overwrite)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if generator is not None:
        gen = generator.freeze().to(device)
    else:
        gen = load_model(cfg.model, cfg.layer, device, cfg.weights)
    class_index = gen.class_index(cfg.class_index)

    f0 = baseline(gen, cfg.baseline_count, cfg.baseline_seed).to(device)
    if cfg.f0_noise:  # perturbed baseline, for stability studies
        rng = torch.Generator().manual_seed(cfg.solver.perturb_seed)
        noise = torch.randn(f0.shape, generator=rng).to(device)
        f0 = f0 + cfg.f0_noise * f0.std() * noise
    code = gen.sample_codes(1, cfg.seed, class_index)
    with torch.no_grad():
        f = gen.d(code)[0]
        x = gen.g(f[None], code)[0]
        baseline_image = gen.g(f0[None], code)[0]
    check_finite("feature f", f, gen)
    check_finite("baseline feature f0", f0, gen)
    check_finite("image g(f)", x, gen)

    grid = Grid(*cfg.grid, *x.shape[1:])
    players = choose_players(cfg, grid, x, baseline_image)
    n = len(players)
    check_memory(n, f.numel(), cfg.memory_budget_gb)
    player_masks = grid.cell_masks()[players].to(device)

    resolved = cfg.to_dict() | {
        "layer": gen.layer,
        "players": players,
        "n": n,
        "class_index": class_index,
    }
    # the checkpoint holds minimal features: only the settings that shape them must match
    after_solve = ("salient", "removal", "denoise", "top_figure")
    key = fingerprint({k: v for k, v in resolved.items() if not k.startswith(after_solve)})
    resume = load_checkpoint(out, key) if out is not None else None

    last_save = time.perf_counter()

    def checkpoint(state: dict[str, torch.Tensor]) -> None:
        nonlocal last_save
        if out is not None and time.perf_counter() - last_save >= checkpoint_every:
            save_checkpoint(out, key, state)
            last_save = time.perf_counter()

    mf = solve_minimal_features(
        gen, code, f, f0, x, player_masks, cfg.solver, resume, checkpoint, progress
    )
    components = or_interactions(mf.u)
    residual = universal_matching_residual(mf.u, components, f0)
    if not torch.isfinite(residual).all():
        msg = "universal matching residual is not finite; the minimal features hold NaN or inf"
        raise ValueError(msg)
    denoise_summary: dict[str, Any] = {}
    extra_tensors: dict[str, torch.Tensor] = {}
    used = components
    if cfg.denoise:
        dn = remove_noise(mf.u, f0, cfg.denoise_tau, cfg.denoise_steps)
        problem = Problem(gen, code, f, f0, x, player_masks, cfg.solver)
        rel_dn = problem.all_relative_errors(dn.u)
        meets_dn = rel_dn < cfg.solver.constraint
        used = dn.components
        extra_tensors = {
            "minimal_features_denoised": dn.u,
            "components_denoised": dn.components,
            "rel_error_denoised": rel_dn,
        }
        denoise_summary = {
            "tau_rel": dn.tau_rel,
            "steps": dn.steps,
            "seconds": dn.seconds,
            "l1_before": dn.l1_before,
            "l1_after": dn.l1_after,
            "subsets_meeting_constraint": float(meets_dn.float().mean()),
            "subsets_failing_constraint": torch.nonzero(~meets_dn).flatten().tolist(),
            "universal_matching_max_rel_residual": float(
                universal_matching_residual(dn.u, dn.components, f0).max()
            ),
        }
    scale = float((f - f0).norm())
    rules = {
        "tau": select_salient(used, scale, "tau", cfg.salient_tau),
        "top": select_salient(used, scale, "top", top=cfg.salient_top),
        "removal": removal_salient(
            used,
            f0,
            lambda feats: torch.cat([gen.g(c, code) for c in feats.split(mf.chunk)]),
            player_masks,
            cfg.removal_threshold,
        ),
    }
    salient = rules[cfg.salient_rule]
    norms = component_norms(used)

    title = f"{gen.name} seed {cfg.seed}" + (f" class {class_index}" if gen.num_classes else "")
    top = salient[: cfg.top_figure].tolist()
    with torch.no_grad():
        rendered = list(gen.g(f0 + used[top], code)) if top else []
    figures = {
        "target.png": target_figure(x, gen.value_range, grid, players, f"target: {title}")[0],
        "baseline.png": image_figure(baseline_image, gen.value_range, "baseline g(f0)")[0],
    }
    if top:
        figures["components.png"] = components_figure(
            x,
            baseline_image,
            rendered,
            top,
            [float(norms[k]) for k in top],
            gen.value_range,
            grid,
            players,
        )[0]

    failing = torch.nonzero(~mf.meets).flatten().tolist()
    summary = {
        "model": gen.name,
        "layer": gen.layer,
        "feature_shape": list(f.shape),
        "grid": list(cfg.grid),
        "players": players,
        "n": n,
        "class_index": class_index,
        "sparsity": cfg.solver.sparsity,
        "reduction": cfg.solver.reduction,
        "universal_matching_max_rel_residual": float(residual.max()),
        "subsets_meeting_constraint": float(mf.meets.float().mean()),
        "subsets_failing_constraint": failing,
        "rel_error_median": float(mf.rel_error[1:].median()) if n else 0.0,
        "rel_error_max": float(mf.rel_error.max()),
        "constraint": cfg.solver.constraint,
        "components_used": "denoised" if cfg.denoise else "raw",
        "denoise": denoise_summary,
        "salient_rule": cfg.salient_rule,
        "salient_counts": {rule: len(ks) for rule, ks in rules.items()},
        "salient": salient.tolist(),
        "salient_norms": [float(norms[k]) for k in salient],
        "feature_change_norm": scale,
        "mean_passes_per_subset": float(mf.passes[1:].float().mean()) if n else 0.0,
        "chunk": mf.chunk,
        "device": str(device),
        "wall_seconds": time.perf_counter() - start,
        "peak_memory_bytes": peak_memory_bytes(device),
    }
    config = resolved | {
        "regprim_version": regprim.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_shape": list(f.shape),
        "value_range": list(gen.value_range),
    }
    tensors = {
        "f": f,
        "f0": f0,
        "code": code[0],
        "image": x,
        "baseline_image": baseline_image,
        "minimal_features": mf.u,
        "components": components,
        "rel_error": mf.rel_error,
        "meets_constraint": mf.meets.to(torch.uint8),
        "passes": mf.passes,
        "universal_matching_residual": residual,
        **extra_tensors,
    }
    run = Run(config=config, summary=summary, tensors=tensors)

    def verification(folder: Path) -> None:
        run.metrics = write_verification(run, gen, folder)

    try:
        if out is not None:
            extra = verification if verify else None
            write_run(run, out, overwrite=overwrite, figures=figures, extra=extra)
        elif verify:
            run.metrics = verify_run(run, gen)
    finally:
        for fig in figures.values():
            plt.close(fig)
    return run
