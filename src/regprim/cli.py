"""Command line: ``regprim explain | models | reconstruct``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from regprim.explain import ExplainConfig, explain
from regprim.minimal_features import (
    PRECISIONS,
    REDUCTIONS,
    SPARSITY,
    WARM_STARTS,
    SolverConfig,
)
from regprim.models import DEFAULT_MODEL, MODELS, load_model
from regprim.regions import PLAYER_RULES, Grid, parse_cells, parse_grid
from regprim.salient import SALIENT_RULES


def _explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="disentangle the regional primitives of one image")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="built-in name (see `regprim models`) or path/file.py:function",
    )
    p.add_argument("--layer", help="layer to cut at (default: the model's default)")
    p.add_argument("--weights", help="weights file or folder (BigGAN: folder; 'random' init)")
    p.add_argument("--seed", type=int, default=0, help="seed of the target image's code")
    p.add_argument("--class", dest="class_index", help="class index or name (conditional models)")
    p.add_argument("--grid", default="6x6", help="ROWSxCOLS grid over the image")
    p.add_argument("--players", help="explicit player cells in bit order, e.g. 7,8,14")
    p.add_argument("--n", type=int, default=9, help="number of players when not given")
    p.add_argument(
        "--player-rule",
        choices=PLAYER_RULES,
        default="center",
        help="how to choose n players: centre cells, most changed from g(f0), random",
    )
    p.add_argument("--player-seed", type=int, default=0, help="seed of the random rule")
    p.add_argument("--baseline-count", type=int, default=1000, help="codes averaged for f0")
    d = SolverConfig()
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps per subset")
    p.add_argument("--lr", type=float, default=d.lr, help="initial Adam step (cosine to 0)")
    p.add_argument("--lam", type=float, default=d.lam, help="lambda of the reconstruction term")
    p.add_argument("--sparsity", choices=SPARSITY, default=d.sparsity)
    p.add_argument("--reduction", choices=REDUCTIONS, default=d.reduction)
    p.add_argument(
        "--chunk", type=int, default=d.chunk, help="subsets optimised together (0: from memory)"
    )
    p.add_argument("--full-steps", type=int, default=d.full_steps, help="steps for u(N)")
    p.add_argument(
        "--warm-start",
        choices=WARM_STARTS,
        default=d.warm_start,
        help="start each subset from its parent S+{i} or (the paper) from u(N)",
    )
    p.add_argument(
        "--no-crop",
        action="store_true",
        help="optimise the whole feature map, not only the window that reaches the players",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="generator passes in the loop (bfloat16: faster, less exact)",
    )
    p.add_argument(
        "--constraint",
        type=float,
        default=d.constraint,
        help="max relative masked error for a subset to meet the constraint",
    )
    p.add_argument("--salient-rule", choices=SALIENT_RULES, default="tau")
    p.add_argument(
        "--salient-tau", type=float, default=0.05, help="salient if ||Δf_k|| > tau * ||f - f0||"
    )
    p.add_argument("--salient-top", type=float, default=0.6, help="ratio kept by the top rule")
    p.add_argument(
        "--removal-threshold",
        type=float,
        default=0.1,
        help="removal rule: image matches the baseline below this relative distance",
    )
    p.add_argument(
        "--denoise", action="store_true", help="remove noise from the minimal features (Appendix G)"
    )
    p.add_argument(
        "--denoise-tau",
        type=float,
        default=0.04,
        help="noise bound per number, relative to |u(N) - f0|",
    )
    p.add_argument("--denoise-steps", type=int, default=100)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the metrics, the paper's figures and report.html",
    )


def _fields_from(args: argparse.Namespace, cls, **overrides):
    """A config dataclass from the parsed options of the same names (plus ``overrides``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**(values | overrides))


def cmd_explain(args: argparse.Namespace) -> int:
    solver = _fields_from(args, SolverConfig, crop=not args.no_crop)
    cfg = _fields_from(
        args,
        ExplainConfig,
        grid=parse_grid(args.grid),
        players=parse_cells(args.players) if args.players else None,
        solver=solver,
    )
    run = explain(
        cfg,
        out=args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        verify=not args.no_verify,
    )
    s = run.summary
    print(run)
    print(f"wall {s['wall_seconds']:.1f} s, peak memory {s['peak_memory_bytes'] / 2**20:.0f} MiB")
    print(f"results in {args.out}/ (summary.json, tensors.safetensors, *.png)")
    if run.metrics:
        _print_metrics(run.metrics)
        print(f"report: {args.out / 'report.html'}")
    return 0


def _print_metrics(metrics) -> None:
    for m in metrics:
        better = {True: "higher is better", False: "lower is better", None: ""}
        print(f"  {m.name:<28} {m.value:>10.4g}  {better[m.higher_is_better]}")


def cmd_verify(args: argparse.Namespace) -> int:
    from regprim.report import REPORT, write_verification
    from regprim.run_folder import load_run

    run = load_run(args.run)
    gen = load_model(
        run.config["model"], run.config["layer"], args.device, run.config.get("weights")
    )
    metrics = write_verification(run, gen)
    _print_metrics(metrics)
    print(f"metrics.json, figures and {REPORT} written to {args.run}/")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name, (_, description) in MODELS.items():
        print(f"{name}: {description}")
        try:
            gen = load_model(name)
        except (ModuleNotFoundError, FileNotFoundError) as err:
            if not name.startswith("biggan") or isinstance(err, ModuleNotFoundError):
                print(f"  (not available: {err})")
                continue
            print("  (no weights here: shapes of a random initialisation; --weights FOLDER)")
            gen = load_model(name, weights="random")
        for layer in gen.layers:
            feature, image = gen.cut_at(layer).shapes()
            mark = " (default)" if layer == gen.layer else ""
            print(f"  {layer}: feature {tuple(feature)} -> image {tuple(image)}{mark}")
    print("your own: --model path/to/file.py:function (returns a regprim.SplitGenerator)")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from regprim.figures import reconstruction_figure
    from regprim.reconstruction import reconstruct_run
    from regprim.run_folder import load_run, save_figure

    run = load_run(args.run)
    cells = parse_cells(args.cells)
    image, count = reconstruct_run(run, cells, salient_only=not args.all_components)
    rows, cols = run.summary["grid"]
    grid = Grid(rows, cols, *image.shape[1:])
    fig, _ = reconstruction_figure(
        run.tensors["image"], image, run.config["value_range"], grid, run.players, cells, count
    )
    out = args.out or args.run / f"reconstruct-{'-'.join(map(str, cells))}.png"
    save_figure(fig, out)
    print(json.dumps({"cells": cells, "components": count, "figure": str(out)}))
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    from regprim.explain import ExplainConfig
    from regprim.report import write_verification
    from regprim.run_folder import load_run
    from regprim.stability import stability, write_stability

    run = load_run(args.run)
    cfg = ExplainConfig.from_dict(run.config)
    gen = load_model(
        run.config["model"], run.config["layer"], args.device, run.config.get("weights")
    )
    result = stability(
        cfg, args.repeats, args.init_jitter, args.f0_noise, args.k, gen, progress=not args.quiet
    )
    write_stability(args.run, result)
    write_verification(run, gen)
    for name in ("raw", "denoised"):
        r = result[name]
        print(
            f"{name:>9}: matched cosine {r['matched_cosine']:.3f}, matched region Jaccard "
            f"{r['matched_region_jaccard']:.3f}, top-{args.k} set Jaccard "
            f"{r['topk_set_jaccard']:.3f}, L1 {r['sparsity']['l1_total']:.4g}, 90% energy in "
            f"{r['sparsity']['fraction_carrying_90pct']:.1%} of components"
        )
    print(f"stability.json and the report updated in {args.run}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regprim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _explain_parser(sub)
    sub.add_parser("models", help="list models and the layers they can be cut at")
    r = sub.add_parser("reconstruct", help="Algorithm 2: reconstruct cells from a run")
    r.add_argument("run", type=Path, help="run folder written by `regprim explain`")
    r.add_argument("--cells", required=True, help="player cells to reconstruct, e.g. 7,8")
    r.add_argument("--all-components", action="store_true", help="not only the salient ones")
    r.add_argument("--out", type=Path, help="PNG to write (default: in the run folder)")
    for name, text in (
        ("verify", "compute the faithfulness metrics of a run (and its report)"),
        ("report", "rebuild the figures and report.html of a run"),
    ):
        v = sub.add_parser(name, help=text)
        v.add_argument("run", type=Path, help="run folder written by `regprim explain`")
        v.add_argument("--device", default="cpu", help="cpu or cuda")
    st = sub.add_parser("stability", help="re-explain with perturbations; compare components")
    st.add_argument("run", type=Path, help="run folder written by `regprim explain`")
    st.add_argument("--repeats", type=int, default=3, help="perturbed re-runs")
    st.add_argument("--init-jitter", type=float, default=0.05, help="jitter of u(N)'s start")
    st.add_argument("--f0-noise", type=float, default=0.01, help="noise on f0 (x std of f0)")
    st.add_argument("--k", type=int, default=10, help="top-k components compared")
    st.add_argument("--device", default="cpu")
    st.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    handlers = {
        "explain": cmd_explain,
        "models": cmd_models,
        "reconstruct": cmd_reconstruct,
        "verify": cmd_verify,
        "report": cmd_verify,
        "stability": cmd_stability,
    }
    try:
        return handlers[args.command](args)
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        ModuleNotFoundError,
        MemoryError,
        TypeError,
    ) as err:
        print(f"regprim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
