"""The commands that act on explained runs: ``regprim edit`` (docs/control.md) and
``regprim serve`` (the local explorer, :mod:`regprim.app.serve`)."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from regprim.core.regions import parse_cells
from regprim.storage import folders
from regprim.storage import run_folder as rf


def cmd_edit(args: argparse.Namespace) -> int:
    from regprim.control.edit import Edit, apply, save_edit
    from regprim.control.inversion import invert

    run = rf.load_run(args.run)
    edit = Edit(run)
    if args.drop:
        edit.drop(cells=parse_cells(args.drop))
    if args.drop_masks:
        edit.drop(masks=[int(m) for m in args.drop_masks.split(",")])
    if args.drop_top:
        edit.drop(masks=run.top(args.drop_top))
    if args.keep:
        edit.keep(cells=parse_cells(args.keep))
    for spec in args.scale or []:
        factor, _, cells = spec.partition("@")
        if not cells:
            msg = f"--scale {spec!r} must be FACTOR@CELLS, e.g. 1.5@14,15"
            raise ValueError(msg)
        edit.scale(float(factor), cells=parse_cells(cells))
    if args.transplant:
        if not args.cells:
            msg = "--transplant DONOR needs --cells, the player cells to take from the donor"
            raise ValueError(msg)
        edit.transplant(rf.load_run(args.transplant), parse_cells(args.cells))
    if not edit.operations:
        msg = "no edit given; use --drop, --drop-masks, --drop-top, --keep, --scale or --transplant"
        raise ValueError(msg)
    folders.check_output(args.out, args.overwrite, rf.EDIT)  # before any rendering
    gen = run.generator(args.device)
    result = apply(edit, gen)
    inv = None
    if args.invert:
        inv = invert(gen, result.feature, run.f0, run.code, class_index=run.class_index)
    out = save_edit(edit, result, args.out, args.overwrite, inv)
    print(f"edited cells {result.cells}: locality {result.metrics['locality']:.3g}", end="")
    if "agreement" in result.metrics:
        print(f", agreement with the donor {result.metrics['agreement']:.3g}", end="")
    print()
    for name, m in result.baselines.items():
        extra = f", agreement {m['agreement']:.3g}" if "agreement" in m else ""
        print(f"  {name}: locality {m['locality']:.3g}{extra}")
    if inv is not None:
        print(f"inversion: residual {inv.residual:.3g}, image agreement {inv.image_agreement:.3g}")
    print(f"edit folder: {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from regprim.app.serve import serve
    except ModuleNotFoundError as err:
        msg = (
            f"regprim serve needs {err.name}, which is not installed: pip install 'regprim[serve]'"
        )
        raise ModuleNotFoundError(msg) from err

    if args.edits.exists() and not args.edits.is_dir():
        msg = f"--edits {args.edits} is a file; give a folder for the edit folders"
        raise NotADirectoryError(msg)
    runs = [rf.load_run(path) for path in args.runs]
    token = None if args.no_token else secrets.token_urlsafe(24)
    url = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"regprim serve: {url} ({len(runs)} runs; Ctrl-C stops)")
    serve(runs, host=args.host, port=args.port, token=token, edits=args.edits, device=args.device)
    return 0


def control_parsers(sub) -> None:
    e = sub.add_parser("edit", help="drop, keep, scale or transplant primitives; an edit folder")
    e.add_argument("run", type=Path, help="run folder written by `regprim explain`")
    e.add_argument("--drop", help="drop the components meeting these player cells, e.g. 16")
    e.add_argument("--drop-masks", help="drop the components of these action sets (bitmasks)")
    e.add_argument("--drop-top", type=int, help="drop the K largest components")
    e.add_argument("--keep", help="keep only the components meeting these player cells")
    e.add_argument("--scale", action="append", help="FACTOR@CELLS, e.g. 1.5@14,15 (repeatable)")
    e.add_argument("--transplant", type=Path, help="donor run folder (same model and baseline)")
    e.add_argument("--cells", help="the player cells to transplant from the donor")
    e.add_argument("--invert", action="store_true", help="also find the code z* of the edit")
    e.add_argument("--out", required=True, type=Path, help="edit folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace an edit already in --out")
    e.add_argument("--device", default="cpu", help="cpu or cuda (for --invert)")
    s = sub.add_parser("serve", help="a local web app: reconstruct, edit, transplant, invert")
    s.add_argument("runs", nargs="+", type=Path, help="run folders to load")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8765, help="port on --host to serve at")
    s.add_argument("--edits", type=Path, default=Path("edits"), help="folder for saved edits")
    s.add_argument("--device", default="cpu", help="cpu or cuda: where the generators run")
    s.add_argument(
        "--no-token",
        action="store_true",
        help="serve without the per-start token (any local process or page can then drive it)",
    )
