"""Command line: ``regprim explain | explain-many | edit | serve | verify | report | reconstruct |
stability | models`` (``edit`` and ``serve``, which act on runs: :mod:`regprim.app.cli_control`).

The options of ``explain`` are made from the fields of :class:`regprim.ExplainConfig` and
:class:`regprim.SolverConfig` (:mod:`regprim.app.cli_options`), so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from regprim.app.cli_control import cmd_edit, cmd_serve, control_parsers
from regprim.app.cli_options import Parser, add_config_options, config_from, options_reference
from regprim.config import ExplainConfig, SolverConfig
from regprim.core.regions import parse_cells
from regprim.generators.base import ModelError
from regprim.generators.registry import MODELS
from regprim.pipeline.explain import explain, run_figures, verification_files
from regprim.present.figures import left_out
from regprim.storage import folders
from regprim.storage import run_folder as rf
from regprim.version import __version__


def _explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="disentangle the regional primitives of one image")
    add_config_options(p, ExplainConfig, skip=("solver",))
    add_config_options(p, SolverConfig)
    p.add_argument("--out", type=Path, help="run folder to write (required unless --dry-run)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the time and memory estimates and the players; solve nothing",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with --dry-run: every resolved setting and prediction, as one line of JSON",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the metrics, the paper's figures and report.html",
    )


def _explain_many_parser(sub) -> None:
    p = sub.add_parser(
        "explain-many", help="explain many images into one dataset folder (local, pool or Ray)"
    )
    add_config_options(p, ExplainConfig, skip=("solver", "seed", "class_index", "image"))
    add_config_options(p, SolverConfig)
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument("--seeds", help="seeds of the images' codes, e.g. 0-99 or 1,5,9")
    images.add_argument(
        "--images",
        type=Path,
        help="a folder of photos (PNG, JPEG): each explained as its nearest generated image",
    )
    p.add_argument(
        "--classes", help="classes (conditional models), comma-separated: each seed for each"
    )
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (default: 1, one image at a time)",
    )
    p.add_argument("--ray", action="store_true", help="run on Ray (RAY_ADDRESS, else a local one)")
    p.add_argument("--no-verify", action="store_true", help="skip metrics and reports per image")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the time, memory and disk per image and in all; solve nothing",
    )


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="one image at many cuts: where primitives become regional")
    add_config_options(p, ExplainConfig, skip=("solver", "layer"))
    add_config_options(p, SolverConfig)
    p.add_argument(
        "--layers",
        required=True,
        help="cuts: a list (block1,block2), a range (step=1..3), a pattern (up_blocks.*@step=0) "
        "or auto (every cut that is not a block inside a sampler step)",
    )
    p.add_argument("--out", required=True, type=Path, help="sweep folder to write")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine (default: 1)"
    )
    p.add_argument("--ray", action="store_true", help="run on Ray (RAY_ADDRESS, else a local one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_sweep(args: argparse.Namespace) -> int:
    from regprim.pipeline.sweep import sweep

    cfg = config_from(args)
    record = sweep(cfg, args.layers, args.out, args.workers, args.ray, progress=not args.quiet)
    rows = record["rows"]
    shown = [
        ("metric_leakage", "leakage"),
        ("metric_irrelevant_components_worst", "fig6"),
        ("salient", "salient"),
        ("subsets_meeting_constraint", "meets"),
        ("residual_max", "KKT"),
        ("wall_seconds", "s"),
    ]
    width = max(len(r["layer"] or "") for r in rows) + 2
    print(f"{'cut':<{width}}" + "".join(f"{name:>10}" for _, name in shown))
    for r in rows:
        if r["status"] not in ("ok", "done before"):
            print(f"{r['layer']:<{width}}{r['status']}: {r['error']}")
            continue
        cells = "".join(f"{r[key]:>10.3g}" for key, _ in shown)
        mark = "  <- chosen" if r["layer"] == record["chosen"] else ""
        print(f"{r['layer']:<{width}}{cells}{mark}")
    print(f"chosen: {record['chosen']}: {record['why']}")
    print(f"{args.out}/ sweep.parquet, sweep.png, sweep.json; each cut's run in cuts/")
    failed = [r for r in rows if r["status"] not in ("ok", "done before")]
    return 1 if failed else 0


def cmd_explain_many(args: argparse.Namespace) -> int:
    from regprim.pipeline.dataset import (
        TablesNotWritten,
        explain_many,
        folder_bytes,
        items_of,
        parse_seeds,
        photo_items,
    )

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.images is not None:
        items = photo_items(args.images, classes)
    else:
        items = items_of(parse_seeds(args.seeds), classes)
    cfg = config_from(args)
    if args.dry_run:
        from regprim.pipeline.plan import plan

        first = ExplainConfig.from_dict(
            cfg.to_dict()
            | {"seed": items[0].seed, "class_index": items[0].class_index, "image": items[0].image}
        )
        p = plan(first)
        _print_plan(first, p)
        each = p["run_bytes"]
        print(
            f"dataset: {len(items)} images, each at most {_mib(each)} on disk "
            f"({_mib(each * len(items))} in all; {cfg.storage} storage"
            + (
                f", --storage light: at most {_mib(p['run_bytes_light'])} each"
                if cfg.storage == "full"
                else ""
            )
            + f"), about {p['estimated_solve_seconds'] * len(items):.0f} s of solving in all"
        )
        return 0
    tables, written = "(images.parquet, components.parquet, transfer.json, report.html)", True
    try:
        rows = explain_many(
            cfg,
            items,
            args.out,
            args.workers,
            args.ray,
            verify=not args.no_verify,
            progress=not args.quiet,
        )
    except TablesNotWritten as err:  # the images' summary first, then what failed
        rows, tables, written = err.rows, f"(the tables were not written: {err})", False
    failed = [r for r in rows if r["status"] not in ("ok", "done before")]
    print(f"{len(rows) - len(failed)} of {len(rows)} images explained in {args.out}/ {tables}")
    sizes = [folder_bytes(args.out / r["path"]) for r in rows if r.get("path")]
    if sizes:
        print(f"disk: {_mib(sum(sizes) / len(sizes))} per image ({cfg.storage} storage)")
    for r in failed:
        print(f"  {r['status']}: {r['image']}: {r['error']}")
    return 1 if failed or not written else 0


def _mib(count: float) -> str:
    return f"{count / 2**20:,.1f} MiB"


def _print_plan(cfg: ExplainConfig, p: dict) -> None:
    """What ``--dry-run`` says of one image: time, memory, disk, and the players."""
    s = p["settings"]
    print(f"{s['model']} cut at {s['layer']}, n = {s['n']}, solver {s['solver']['method']}")
    baseline = (
        f"; the baseline of {cfg.baseline_count} codes about {p['baseline_seconds']:.0f} s"
        if p["baseline_seconds"]
        else "; the baseline is cached"
    )
    print(
        f"time: about {p['estimated_solve_seconds']:.0f} s to solve ({p['expected_passes']:.0f}"
        f" generator passes at {p['seconds_per_pass'] * 1e3:.2f} ms, {p['timed']})"
        f"{baseline}; nothing was solved or written"
    )
    print(
        f"memory: about {p['memory_bytes'] / 2**20:.0f} MiB at the peak ("
        f"{p['held_bytes'] / 2**20:.0f} MiB held now, {p['bytes_per_feature'] / 2**20:.1f} "
        f"MiB per feature in a pass of {p['micro_batch']} of the step's {p['batch']}, "
        f"{p['solver_memory_bytes'] / 2**20:.0f} MiB for the solver's tensors)"
    )
    lighter = (
        f"; --storage light: at most {_mib(p['run_bytes_light'])}"
        if cfg.storage == "full" and p["run_bytes_light"] < p["run_bytes"]
        else ""
    )
    print(f"disk: at most {_mib(p['run_bytes'])} for the run folder ({cfg.storage}){lighter}")
    print(f"each pass: {p['g_runs']}")
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in p["plan_seconds"].items())
    print(f"this plan took {sum(p['plan_seconds'].values()):.0f} s ({spent})")
    print(f"players on the {cfg.grid[0]}x{cfg.grid[1]} grid (grid ids; . = not a player):")
    print(p["players"])


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if cfg.layer == "auto" and (args.dry_run or args.no_verify):
        msg = "--layer auto sweeps the cuts and chooses by their metrics: " + (
            "--dry-run plans one cut (give --layer CUT)" if args.dry_run else "drop --no-verify"
        )
        raise ValueError(msg)
    if args.dry_run:
        from regprim.pipeline.plan import plan

        p = plan(cfg)
        _print_plan(cfg, p)
        if args.json:  # the settings, then every prediction
            print(
                json.dumps(
                    {"settings": p["settings"]} | {k: v for k, v in p.items() if k != "settings"}
                )
            )
        else:
            print("every resolved setting and prediction: add --json")
        return 0
    if args.out is None:
        msg = "--out FOLDER is required: the run folder to write (or pass --dry-run)"
        raise ValueError(msg)
    if cfg.layer == "auto":
        from regprim.pipeline.sweep import explain_auto

        run = explain_auto(cfg, args.out, args.overwrite, progress=not args.quiet)
    else:
        run = explain(
            cfg,
            out=args.out,
            overwrite=args.overwrite,
            progress=not args.quiet,
            verify=not args.no_verify,
        )
    s = run.summary
    print(run)
    total = sum(s["stage_seconds"].values())
    print(
        f"wall {total:.1f} s ({s['wall_seconds']:.1f} s to the salient components), "
        f"peak memory {s['peak_memory_bytes'] / 2**20:.0f} MiB"
    )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in s["stage_seconds"].items())
    print(f"stages: {stages}")
    for warning in run.warnings:  # the convergence note among them
        print(f"regprim: warning: {warning}", file=sys.stderr)
    shown = "" if cfg.storage == "light" else ", *.png"
    print(f"results in {args.out}/ (summary.json, tensors.safetensors{shown})")
    if run.metrics:
        _print_metrics(run.metrics)
    if (args.out / rf.REPORT).is_file():
        print(f"report: {args.out / rf.REPORT}")
    return 0


def _print_metrics(metrics) -> None:
    better = {True: "higher is better", False: "lower is better", None: ""}
    for m in metrics:
        value = f"{m.value:>10.4g}" if m.value == m.value else f"{'n/a':>10}"
        note = m.details.get("note", "") if m.value != m.value else ""
        print(f"  {m.name:<28} {value}  {better[m.higher_is_better]} {note}".rstrip())


def rebuild_report(run, device: str = "cpu") -> list:
    """Recompute the metrics, the paper's figures and report.html of a saved run."""
    from regprim.analysis.metrics import evaluate

    gen = run.generator(device)
    ev = evaluate(run, gen)
    shown = run_figures(run, gen, run.config.get("top_figure", 8))  # light runs have none
    files = shown | verification_files(run, gen, ev, shown)
    rf.update_run(run, files, remove=tuple(left_out(ev)))
    return ev.metrics


def cmd_verify(args: argparse.Namespace) -> int:
    run = rf.load_run(args.run, derived=False)
    metrics = rebuild_report(run, args.device)
    _print_metrics(metrics)
    print(f"{rf.METRICS}, figures and {rf.REPORT} written to {args.run}/")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from regprim.generators.registry import layer_table, load_model, weights_status

    if args.model:  # one model, built here: a folder or a file of the user's
        gen = load_model(args.model, weights=args.weights)
        print(f"{args.model}: {gen.name}, cut at {gen.layer} by default")
        _print_layers({layer: gen.cut_at(layer).shapes() for layer in gen.layers}, gen.layer)
        return 0
    table = layer_table()
    for name, (_, description) in MODELS.items():
        print(f"{name}: {description} [{weights_status(name)}]")
        entry = table[name]
        shapes = {k: (v["feature"], v["image"]) for k, v in entry["layers"].items()}
        _print_layers(shapes, entry["default"])
    print(
        "a diffusers pipeline folder: --model diffusers:DIR[?steps=4&guidance=3&prompt=FILE] "
        "(cuts step=K, BLOCK@step=K; regprim models --model diffusers:DIR lists them)"
    )
    print("your own: --model path/to/file.py:function (returns a regprim.SplitGenerator)")
    return 0


def _print_layers(shapes: dict[str, tuple], default: str) -> None:
    """One line per layer; a sampler's blocks are listed for its first step only."""
    steps = {layer.rpartition("=")[2] for layer in shapes if "@step=" in layer}
    for layer, (feature, image) in shapes.items():
        if "@step=" in layer and not layer.endswith("@step=0") and layer != default:
            continue
        mark = " (default)" if layer == default else ""
        print(f"  {layer}: feature {tuple(feature)} -> image {tuple(image)}{mark}")
    if len(steps) > 1:
        print(f"  (any block at any step: BLOCK@step=K, K in 0..{len(steps) - 1})")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from regprim.present.figures import png, reconstruction_figure

    run = rf.load_run(args.run)
    cells = parse_cells(args.cells)
    image, count = run.reconstruct(cells, salient_only=not args.all_components)
    fig, _ = reconstruction_figure(
        run.image, image, run.value_range, run.grid, run.players, cells, count
    )
    out = args.out or args.run
    if out.is_dir():  # a folder: the default file name in it
        out = out / rf.reconstruction_png(cells)
    if out.suffix.lower() != ".png":
        msg = f"--out {out} must be a .png file or an existing folder"
        raise ValueError(msg)
    if out.parent.resolve() == run.path.resolve():  # in the run: listed in its manifest
        rf.update_run(run, {out.name: png(fig)})
    else:
        rf.atomic_write(out, png(fig))
    print(json.dumps({"cells": cells, "components": count, "figure": str(out)}))
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    if args.top < 1:
        msg = f"--top {args.top}: give how many components to list, at least 1"
        raise ValueError(msg)
    run = rf.load_run(args.run, derived=False)
    masks = run.salient if not args.all else run.ranked
    rows = [
        {"rank": i, "cells": run.cells(k), "order": k.bit_count(), "norm": run.norm(k), "mask": k}
        for i, k in enumerate(masks[: args.top], start=1)
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(run)
    kind = "non-zero" if args.all else "salient"
    print(f"{min(args.top, len(masks))} of {len(masks)} {kind} components, by decreasing norm:")
    print(f"{'rank':>4}  {'cells (grid ids)':<24} {'|S|':>3} {'norm':>9}  bitmask")
    for r in rows:
        cells = ",".join(map(str, r["cells"]))
        print(f"{r['rank']:>4}  {cells:<24} {r['order']:>3} {r['norm']:>9.4g}  {r['mask']}")
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    from regprim.pipeline.stability import stability

    run = rf.load_run(args.run, derived=False)
    cfg = ExplainConfig.from_dict(run.config)
    gen = run.generator(args.device)
    result = stability(
        cfg, args.repeats, args.init_jitter, args.f0_noise, args.k, gen, progress=not args.quiet
    )
    rf.update_run(run, {rf.STABILITY: rf.stability_file(result)})
    rebuild_report(run, args.device)
    for name in ("raw", "denoised"):
        if name not in result:
            continue
        r = result[name]
        print(
            f"{name:>9}: matched cosine {r['matched_cosine']:.3f}, matched region Jaccard "
            f"{r['matched_region_jaccard']:.3f}, top-{args.k} set Jaccard "
            f"{r['topk_set_jaccard']:.3f}, L1 {r['sparsity']['l1_total']:.4g}, 90% energy in "
            f"{r['sparsity']['fraction_carrying_90pct']:.1%} of components"
        )
    print(f"{rf.STABILITY} and the report updated in {args.run}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="regprim",
        description="Explain image generators by regional primitives (arXiv:2410.04421): "
        "disentangle an intermediate feature into components that each generate one set of "
        "image cells.",
        epilog="regprim COMMAND --help for each command; docs/cli.md lists every option.",
    )
    parser.add_argument("--version", action="version", version=f"regprim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _explain_parser(sub)
    _explain_many_parser(sub)
    _sweep_parser(sub)
    control_parsers(sub)
    m = sub.add_parser("models", help="list models and the layers they can be cut at")
    m.add_argument("--model", help="list the cuts of this model (a diffusers:DIR folder, a file)")
    m.add_argument("--weights", help="weights for --model, as for explain")
    r = sub.add_parser("reconstruct", help="Algorithm 2: reconstruct cells from a run")
    r.add_argument("run", type=Path, help="run folder written by `regprim explain`")
    r.add_argument("--cells", required=True, help="player cells to reconstruct, e.g. 7,8")
    r.add_argument("--all-components", action="store_true", help="not only the salient ones")
    r.add_argument("--out", type=Path, help="PNG to write (default: in the run folder)")
    c = sub.add_parser(
        "components", help="list a run's salient components as sorted cell lists (grid ids)"
    )
    c.add_argument("run", type=Path, help="run folder written by `regprim explain`")
    c.add_argument("--top", type=int, default=20, help="how many, largest norm first")
    c.add_argument("--all", action="store_true", help="every non-zero component, not only salient")
    c.add_argument("--json", action="store_true", help="one JSON list instead of the table")
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
    st.add_argument(
        "--init-jitter",
        type=float,
        default=0.05,
        help="jitter of the solver's start (beta; the paper solver: u(N)'s alpha)",
    )
    st.add_argument("--f0-noise", type=float, default=0.01, help="noise on f0 (x std of f0)")
    st.add_argument(
        "--k",
        type=int,
        default=10,
        help="top-k components compared (each matched among the other run's top 3k)",
    )
    st.add_argument("--device", default="cpu", help="cpu or cuda")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


HANDLERS = {
    "explain": cmd_explain,
    "explain-many": cmd_explain_many,
    "sweep": cmd_sweep,
    "models": cmd_models,
    "reconstruct": cmd_reconstruct,
    "components": cmd_components,
    "verify": cmd_verify,
    "report": cmd_verify,
    "stability": cmd_stability,
    "edit": cmd_edit,
    "serve": cmd_serve,
}


def cli_reference() -> str:
    """docs/cli.md, from the parsers (regenerate with ``python -c "from regprim.app.cli import
    cli_reference as r; print(r(), end='')" > docs/cli.md``; a test keeps it in sync)."""
    return options_reference(build_parser())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # no command: the help, not an error
        parser.print_help()
        return 0
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, which knows its options' names
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        print(f"\nregprim: interrupted. {_interrupted(args)}", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        PermissionError,
        ModuleNotFoundError,
        MemoryError,
        ModelError,
        ConnectionError,
        OSError,  # a full disk, a mount point: said before the work, no traceback
        folders.RunFolderBusy,
    ) as err:
        print(f"regprim: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # a bug: its traceback, and where to send it
        traceback.print_exc()
        print(
            f"regprim: internal error in regprim {__version__} (a bug, not your input): please "
            "report it with the traceback above",
            file=sys.stderr,
        )
        return 3


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command left behind, and how to go on."""
    if args.command != "explain":
        return "Nothing was changed that is not whole; run the command again."
    partial = rf.partial_dir(args.out) / rf.CHECKPOINT
    if partial.is_file():
        return (
            f"The solver state so far is saved in {partial}; run the same command again to "
            "resume from it."
        )
    return f"No run was written to {args.out} and there was no solver state to keep yet."


if __name__ == "__main__":
    sys.exit(main())
