"""The pipeline, as a short sequence of named stages (docs/architecture.md)::

    load -> target -> solve -> interactions -> [noise removal] -> salient -> summary
         -> figures -> [metrics -> report] -> write

Each stage is a function of what the earlier ones made; :func:`explain` runs them in order
(``summary.json``'s numbers: :mod:`regprim.explanation.summary`; ``--dry-run``:
:mod:`regprim.pipeline.plan`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from regprim.analysis.metrics import Evaluation, evaluate, metric_warnings
from regprim.config import ExplainConfig
from regprim.core.components import ComponentTable
from regprim.core.interactions import universal_matching_residual
from regprim.core.salient import removal_salient, select_salient
from regprim.explanation.run import Run, component_table
from regprim.explanation.summary import run_metadata, summarise
from regprim.files import content_hash, sources_hash
from regprim.generators.base import SplitGenerator
from regprim.present.figures import (
    components_figure,
    image_figure,
    left_out,
    paper_figures,
    png,
    target_figure,
)
from regprim.present.report import report_html
from regprim.solvers import MinimalFeatures, check_memory, or_components, solve
from regprim.solvers.denoise import remove_noise
from regprim.solvers.problem.target import Target, build_target
from regprim.storage import folders
from regprim.storage import run_folder as rf

# settings applied after the solve: a checkpoint of minimal features stays valid across them
AFTER_SOLVE = ("salient", "removal", "denoise", "top_figure")


class StageClock:
    """Times the stages of a run; with ``progress``, says on stderr when each one starts."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.progress:
            print(f"regprim: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def load_generator(cfg: ExplainConfig, generator: SplitGenerator | None = None) -> SplitGenerator:
    """Stage 1: the split generator named by ``cfg`` (or the one given), frozen, on the device."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if generator is not None:
        return generator.freeze().to(device)
    from regprim.generators.registry import load_model, model_spec  # model code when named

    spec = model_spec(cfg.model, cfg.prompt, cfg.negative_prompt)
    return load_model(spec, cfg.layer, device, cfg.weights)


def resolved_config(cfg: ExplainConfig, target: Target) -> dict[str, Any]:
    """The settings as they were applied: layer, players and class resolved, files given by
    path made absolute and their contents hashed (so that a checkpoint made with other weights
    or another model file is never resumed)."""
    resolved = cfg.to_dict() | {
        "layer": target.gen.layer,
        "players": target.players,
        "n": target.n,
        "class_index": target.class_index,
    }
    from regprim.generators.registry import model_sources, model_spec

    spec, paths = model_sources(model_spec(cfg.model, cfg.prompt, cfg.negative_prompt))
    if paths:
        resolved["model"] = spec
        resolved["model_files"] = [str(p) for p in paths]
        resolved["model_sha256"] = sources_hash(paths)
    if cfg.weights not in (None, "random") and Path(cfg.weights).exists():
        resolved["weights"] = str(Path(cfg.weights).resolve())
        resolved["weights_sha256"] = content_hash(cfg.weights)
    if cfg.image is not None:
        resolved["image"] = str(Path(cfg.image).resolve())
        resolved["image_sha256"] = content_hash(cfg.image)
    return resolved


def checkpoint_key(resolved: dict[str, Any], target: Target) -> str:
    """What a checkpoint must match to be resumed: every setting that shapes the minimal
    features (not those applied after the solve) and the target's f, f0 and x themselves."""
    settings = {k: v for k, v in resolved.items() if not k.startswith(AFTER_SOLVE)}
    return rf.fingerprint(settings | {"inputs": rf.tensor_hash(target.f, target.f0, target.x)})


def solve_minimal_features(
    cfg: ExplainConfig,
    target: Target,
    resolved: dict[str, Any],
    out: Path | None,
    checkpoint_every: float,
    progress: bool,
) -> MinimalFeatures:
    """Stage 3: the minimal features, resumed from and checkpointed to ``out``'s checkpoint."""
    key = checkpoint_key(resolved, target)
    resume = rf.load_checkpoint(out, key) if out is not None else None
    last_save = time.perf_counter()
    latest: dict[str, Tensor] = {}

    def checkpoint(state: dict[str, Tensor]) -> None:
        nonlocal last_save
        latest.update(state)
        if out is not None and time.perf_counter() - last_save >= checkpoint_every:
            rf.save_checkpoint(out, key, state)
            last_save = time.perf_counter()

    try:
        return solve(target, cfg.solver, resume, checkpoint, progress, cfg.memory_budget_gb)
    except KeyboardInterrupt:  # keep the work done so far, then stop
        if out is not None and latest:
            rf.save_checkpoint(out, key, latest)
        raise


def interactions(target: Target, mf: MinimalFeatures, light: bool = False) -> dict[str, Tensor]:
    """Stage 4: the OR interactions (Eq. 10, :func:`or_components`: the component table of the
    solve) and the universal-matching check; the run's tensors (the target's, and the solver
    result's own: every subset, or for the whole grid the component list and the held-out
    checks)."""
    mf.table = or_components(mf)
    return {
        "f": target.f,
        "f0": target.f0,
        "code": target.code[0],
        "image": target.x,
        "baseline_image": target.baseline_image,
        **({} if target.photo is None else {"photo": target.photo}),
        "meets_constraint": mf.meets.to(torch.uint8),
    } | mf.tensors(target.f0, light)


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
    cfg: ExplainConfig, target: Target, table: ComponentTable, batch: int
) -> dict[str, Tensor]:
    """Stage 6: the salient components by each rule (bitmasks by decreasing norm)."""
    scale = float((target.f - target.f0).norm())
    masks, norms = table.masks, table.norms
    return {
        "tau": select_salient(masks, norms, scale, "tau", cfg.salient_tau),
        "top": select_salient(masks, norms, scale, "top", top=cfg.salient_top),
        "removal": removal_salient(
            masks,
            table.values,
            target.f0,
            lambda feats: target.gen.render(feats, target.code, batch),
            target.player_masks,
            cfg.removal_threshold,
        ),
    }


def run_figures(run: Run, gen: SplitGenerator, top: int) -> dict[str, bytes]:
    """The run's own figures as PNG: target, baseline and the most salient components."""
    title = f"{run.model} seed {run.config['seed']}"
    if gen.num_classes:
        title += f" class {run.class_index}"
    shown = run.salient[:top]
    fit = run.summary.get("image_fit")
    if fit:
        title = f"{run.model} fitted to {Path(run.config['image']).name}"
    figures = {
        rf.TARGET_PNG: target_figure(
            run.image,
            run.value_range,
            run.grid,
            run.players,
            f"target: {title}",
            run.tensors.get("photo"),
            fit["rms_residual"] if fit else None,
        )[0],
        rf.BASELINE_PNG: image_figure(run.baseline_image, run.value_range, "baseline g(f0)")[0],
    }
    if shown:
        features = run.f0 + run.component(shown)
        rendered = gen.render(features.to(gen.device), run.code.to(gen.device)).cpu()
        figures[rf.COMPONENTS_PNG] = components_figure(
            run.image,
            run.baseline_image,
            list(rendered),
            shown,
            [run.norm(k) for k in shown],
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
    page = report_html(run, gen, ev.metrics, shown, figures, stability, left_out(ev))
    return {rf.METRICS: rf.metrics_file(ev.metrics), **figures, rf.REPORT: page}


def explain(
    cfg: ExplainConfig | None = None,
    out: str | Path | None = None,
    *,
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
        verify: also compute the faithfulness metrics (``run.metrics``), and with ``out`` the
            paper's figures and report.html.
        checkpoint_every: seconds between checkpoints of the solver state in ``out`` (an
            interrupted run loses at most that much work; each checkpoint writes the whole
            solver state, so not after every chunk).
    """
    cfg = cfg or ExplainConfig()
    if cfg.layer == "auto":  # the sweep explains through this function: it lies above it
        msg = (
            "layer 'auto' sweeps the model's cuts and keeps the chosen one: call "
            "regprim.explain_auto(cfg, out) (the CLI's --layer auto does)"
        )
        raise ValueError(msg)
    if out is None:
        return _explain(cfg, None, overwrite, progress, generator, verify, checkpoint_every)
    out = Path(out).resolve()  # "." has no name to lock or stage beside
    folders.check_output(out, overwrite, rf.CONFIG)
    with folders.lock(out):
        return _explain(cfg, out, overwrite, progress, generator, verify, checkpoint_every)


def _explain(
    cfg: ExplainConfig,
    out: Path | None,
    overwrite: bool,
    progress: bool,
    generator: SplitGenerator | None,
    verify: bool,
    checkpoint_every: float,
) -> Run:
    """The stages of :func:`explain`, in order, each timed (``summary.stage_seconds``)."""
    start = time.perf_counter()
    clock = StageClock(progress)
    with clock("load"):
        gen = load_generator(cfg, generator)
    with clock("target and baseline"):
        target = build_target(cfg, gen)
        check_memory(cfg.solver, target.n, target.f.numel(), cfg.memory_budget_gb)
        if out is not None:  # a full disk fails here, not after the whole pipeline
            folders.check_space(
                out, rf.run_bytes(target.n, target.f.numel(), cfg.denoise, cfg.storage)
            )
        resolved = resolved_config(cfg, target)
    with clock("minimal features"):
        mf = solve_minimal_features(cfg, target, resolved, out, checkpoint_every, progress)
    with clock("interactions"):
        tensors = interactions(target, mf, cfg.storage == "light")
    if cfg.denoise:
        with clock("noise removal"):
            denoised = noise_removal(cfg, target, mf, tensors)
    with clock("salient components"):
        table = component_table(tensors, target.n, cfg.denoise)
        rules = salient_sets(cfg, target, table, mf.chunk)
    summary = summarise(
        cfg, target, mf, tensors, table, rules, denoised if cfg.denoise else {}, start
    )
    on_cpu = {k: v.detach().cpu() for k, v in tensors.items()}  # as the run folder keeps them
    run = Run(config=resolved | run_metadata(target), summary=summary, tensors=on_cpu)
    # no figures and no report where nothing is written (out=None) or light storage asks none
    light = cfg.storage == "light" or out is None
    files: dict[str, rf.Content] = {}
    if not light:
        with clock("figures"):
            files |= run_figures(run, gen, cfg.top_figure)
    if verify:
        with clock("metrics"):
            evaluation = evaluate(run, gen)
            run.metrics = evaluation.metrics
            summary["warnings"] += metric_warnings(evaluation.metrics)
        if light:
            files[rf.METRICS] = rf.metrics_file(evaluation.metrics)
        else:
            with clock("report"):
                files |= verification_files(run, gen, evaluation, dict(files))
    summary["stage_seconds"] = dict(clock.seconds)  # the write itself is not in it
    if out is not None:
        with clock("write"):
            rf.write_run(run, out, overwrite=overwrite, files=files)
    return run
