"""The pipeline, as a short sequence of named stages (docs/architecture.md)::

    load -> target -> solve -> interactions -> noise removal -> salient -> metrics -> figures
         -> report -> write

Each stage is a function of what the earlier ones made; :func:`explain` runs them in order.
"""

from __future__ import annotations

import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from regprim import run_folder as rf
from regprim.config import ExplainConfig
from regprim.denoise import remove_noise
from regprim.figures import components_figure, image_figure, paper_figures, png, target_figure
from regprim.generator import SplitGenerator
from regprim.interactions import or_interactions, universal_matching_residual
from regprim.metrics import Evaluation, evaluate
from regprim.models import load_model
from regprim.report import report_html
from regprim.run import Run
from regprim.salient import removal_salient, select_salient
from regprim.solvers import MinimalFeatures, check_memory, solve
from regprim.target import Target, build_target
from regprim.version import __version__

# settings applied after the solve: a checkpoint of minimal features stays valid across them
AFTER_SOLVE = ("salient", "removal", "denoise", "top_figure")


def load_generator(cfg: ExplainConfig, generator: SplitGenerator | None = None) -> SplitGenerator:
    """Stage 1: the split generator named by ``cfg`` (or the one given), frozen, on the device."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if generator is not None:
        return generator.freeze().to(device)
    return load_model(cfg.model, cfg.layer, device, cfg.weights)


def resolved_config(cfg: ExplainConfig, target: Target) -> dict[str, Any]:
    """The settings as they were applied (layer, players and class resolved)."""
    return cfg.to_dict() | {
        "layer": target.gen.layer,
        "players": target.players,
        "n": target.n,
        "class_index": target.class_index,
    }


def solve_minimal_features(
    cfg: ExplainConfig,
    target: Target,
    resolved: dict[str, Any],
    out: Path | None,
    checkpoint_every: float,
    progress: bool,
) -> MinimalFeatures:
    """Stage 3: the minimal features, resumed from and checkpointed to ``out``'s checkpoint."""
    key = rf.fingerprint({k: v for k, v in resolved.items() if not k.startswith(AFTER_SOLVE)})
    resume = rf.load_checkpoint(out, key) if out is not None else None
    last_save = time.perf_counter()

    def checkpoint(state: dict[str, Tensor]) -> None:
        nonlocal last_save
        if out is not None and time.perf_counter() - last_save >= checkpoint_every:
            rf.save_checkpoint(out, key, state)
            last_save = time.perf_counter()

    return solve(target, cfg.solver, resume, checkpoint, progress)


def interactions(target: Target, mf: MinimalFeatures) -> dict[str, Tensor]:
    """Stage 4: OR interactions (Eq. 10) and the universal-matching check; the run's tensors."""
    components = or_interactions(mf.u)
    residual = universal_matching_residual(mf.u, components, target.f0)
    if not torch.isfinite(residual).all():
        msg = "universal matching residual is not finite; the minimal features hold NaN or inf"
        raise ValueError(msg)
    return {
        "f": target.f,
        "f0": target.f0,
        "code": target.code[0],
        "image": target.x,
        "baseline_image": target.baseline_image,
        "minimal_features": mf.u,
        "components": components,
        "rel_error": mf.rel_error,
        "meets_constraint": mf.meets.to(torch.uint8),
        "passes": mf.passes,
        "steps": mf.steps,
        "residual": mf.residual,
        "converged": mf.converged.to(torch.uint8),
        "universal_matching_residual": residual,
    } | ({} if mf.beta is None else {"beta": mf.beta})


def noise_removal(
    cfg: ExplainConfig, target: Target, mf: MinimalFeatures, tensors: dict[str, Tensor]
) -> dict[str, Any]:
    """Stage 5 (``--denoise``): Appendix G; adds the denoised tensors, returns the summary."""
    dn = remove_noise(mf.u, target.f0, cfg.denoise_tau, cfg.denoise_steps)
    rel, _ = mf.objective.check_all(dn.u)
    meets = rel < cfg.solver.constraint
    tensors |= {
        "minimal_features_denoised": dn.u,
        "components_denoised": dn.components,
        "rel_error_denoised": rel,
    }
    return {
        "tau_rel": dn.tau_rel,
        "steps": dn.steps,
        "seconds": dn.seconds,
        "l1_before": dn.l1_before,
        "l1_after": dn.l1_after,
        "subsets_meeting_constraint": float(meets.float().mean()),
        "subsets_failing_constraint": torch.nonzero(~meets).flatten().tolist(),
        "universal_matching_max_rel_residual": float(
            universal_matching_residual(dn.u, dn.components, target.f0).max()
        ),
    }


def salient_sets(
    cfg: ExplainConfig, target: Target, components: Tensor, batch: int
) -> dict[str, Tensor]:
    """Stage 6: the salient components by each rule (bitmasks by decreasing norm)."""
    scale = float((target.f - target.f0).norm())
    return {
        "tau": select_salient(components, scale, "tau", cfg.salient_tau),
        "top": select_salient(components, scale, "top", top=cfg.salient_top),
        "removal": removal_salient(
            components,
            target.f0,
            lambda feats: target.gen.render(feats, target.code, batch),
            target.player_masks,
            cfg.removal_threshold,
        ),
    }


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def summarise(
    cfg: ExplainConfig,
    target: Target,
    mf: MinimalFeatures,
    tensors: dict[str, Tensor],
    rules: dict[str, Tensor],
    denoised: dict[str, Any],
    start: float,
) -> dict[str, Any]:
    """The headline numbers of ``summary.json`` (docs/run-folder.md)."""
    gen, n, solver = target.gen, target.n, cfg.solver
    used = tensors["components_denoised" if cfg.denoise else "components"]
    salient = rules[cfg.salient_rule]
    norms = used.flatten(1).norm(dim=1)
    return {
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
        "subsets_meeting_constraint": float(mf.meets.float().mean()),
        "subsets_failing_constraint": torch.nonzero(~mf.meets).flatten().tolist(),
        "rel_error_median": float(mf.rel_error[1:].median()) if n else 0.0,
        "rel_error_max": float(mf.rel_error.max()),
        "constraint": solver.constraint,
        "components_used": "denoised" if cfg.denoise else "raw",
        "denoise": denoised,
        "salient_rule": cfg.salient_rule,
        "salient_counts": {rule: len(ks) for rule, ks in rules.items()},
        "salient": salient.tolist(),
        "salient_norms": [float(norms[k]) for k in salient],
        "feature_change_norm": float((target.f - target.f0).norm()),
        "mean_passes_per_subset": float(mf.passes[1:].float().mean()) if n else 0.0,
        "mean_forward_passes_per_subset": float(mf.forward_passes[1:].mean()),
        "mean_steps_per_subset": float(mf.steps[1:].float().mean()),
        "subsets_converged": float(mf.converged[1:].float().mean()),
        "subsets_capped": torch.nonzero(~mf.converged).flatten().tolist(),
        "residual_max": float(mf.residual[1:].max()),
        "residual_median": float(mf.residual[1:].median()),
        "objective": float(mf.value.sum()),
        "chunk": mf.chunk,
        "device": str(gen.device),
        "wall_seconds": time.perf_counter() - start,
        "peak_memory_bytes": peak_memory_bytes(gen.device),
    }


def run_metadata(target: Target) -> dict[str, Any]:
    """What ``config.json`` records beside the settings."""
    return {
        "regprim_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_shape": list(target.feature_shape),
        "value_range": list(target.gen.value_range),
    }


def run_figures(run: Run, gen: SplitGenerator, top: int) -> dict[str, bytes]:
    """The run's own figures as PNG: target, baseline and the most salient components."""
    title = f"{run.model} seed {run.config['seed']}"
    if gen.num_classes:
        title += f" class {run.class_index}"
    shown = run.salient[:top]
    figures = {
        rf.TARGET_PNG: target_figure(
            run.image, run.value_range, run.grid, run.players, f"target: {title}"
        )[0],
        rf.BASELINE_PNG: image_figure(run.baseline_image, run.value_range, "baseline g(f0)")[0],
    }
    if shown:
        features = run.f0 + run.components[shown]
        rendered = gen.render(features.to(gen.device), run.code.to(gen.device))
        figures[rf.COMPONENTS_PNG] = components_figure(
            run.image,
            run.baseline_image,
            list(rendered),
            shown,
            [float(run.norms[k]) for k in shown],
            run.value_range,
            run.grid,
            run.players,
        )[0]
    return {name: png(fig) for name, fig in figures.items()}


def verification_files(
    run: Run, gen: SplitGenerator, ev: Evaluation, shown: dict[str, bytes]
) -> dict[str, rf.Content]:
    """``metrics.json``, the paper's figures and ``report.html`` of an evaluated run; ``shown``
    are the run's own figures, shown first in the report."""
    figures = {name: png(fig) for name, fig in paper_figures(run, ev).items()}
    stability = rf.read_stability(run.path) if run.path is not None else None
    page = report_html(run, gen, ev.metrics, shown | figures, stability)
    return {rf.METRICS: rf.metrics_file(ev.metrics), **figures, rf.REPORT: page}


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
        verify: also compute the faithfulness metrics, the paper's figures and report.html.
        checkpoint_every: seconds between checkpoints of the solver state in ``out`` (an
            interrupted run loses at most that much work; each checkpoint writes the whole
            solver state, so not after every chunk).
    """
    cfg = cfg or ExplainConfig()
    start = time.perf_counter()
    out = Path(out) if out is not None else None
    if out is not None:
        rf.check_output(out, overwrite)
    gen = load_generator(cfg, generator)
    target = build_target(cfg, gen)
    check_memory(cfg.solver, target.n, target.f.numel(), cfg.memory_budget_gb)
    resolved = resolved_config(cfg, target)
    mf = solve_minimal_features(cfg, target, resolved, out, checkpoint_every, progress)
    tensors = interactions(target, mf)
    denoised = noise_removal(cfg, target, mf, tensors) if cfg.denoise else {}
    used = tensors["components_denoised" if cfg.denoise else "components"]
    rules = salient_sets(cfg, target, used, mf.chunk)
    summary = summarise(cfg, target, mf, tensors, rules, denoised, start)
    run = Run(config=resolved | run_metadata(target), summary=summary, tensors=tensors)
    files: dict[str, rf.Content] = dict(run_figures(run, gen, cfg.top_figure))
    if verify:
        evaluation = evaluate(run, gen)
        run.metrics = evaluation.metrics
        files |= verification_files(run, gen, evaluation, dict(files))
    if out is not None:
        rf.write_run(run, out, overwrite=overwrite, files=files)
    return run
