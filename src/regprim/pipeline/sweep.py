"""One image at many cuts: where in the network the primitives become regional.

``regprim sweep --model faces-ddim --layers step=1..3 --n 4 --out SWEEP`` explains the same image
(seed, class, players) cut at every listed layer and writes (docs/run-folder.md, "Sweep
folders")::

    SWEEP/cuts/<cut>/      one run folder per cut (cut-step_1, cut-up_blocks.0_step_0, ...)
    SWEEP/sweep.json       the settings, the cuts in order and the rule's choice
    SWEEP/sweep.parquet    one row per cut: the headline numbers (``COLUMNS``)
    SWEEP/sweep.png        each number against the cut, the chosen cut marked

It runs on the machinery of ``explain-many`` (:func:`regprim.pipeline.dataset.run_items`: one
process, a local pool or Ray; a cut whose run folder is complete is skipped, so it resumes).

The choice (``--layer auto`` and :func:`choose`): among the cuts whose solve converged (every
subset meets the constraint and the KKT residual is below ``or_gtol``), the most exclusive one
(lowest median leakage; ties: the lower worst Fig. 6 point). Where no cut converged, the most
exclusive of all, said as such.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from regprim.config import ExplainConfig
from regprim.pipeline.dataset import Item, generator_of, run_items, same_settings
from regprim.storage import folders
from regprim.storage import run_folder as rf

CUTS, SWEEP, TABLE, FIGURE = "cuts", "sweep.json", "sweep.parquet", "sweep.png"
# (column, what it is, lower is better) of the table and the figure
COLUMNS = (
    ("metric_leakage", "leakage (median)", True),
    ("metric_irrelevant_components_worst", "Fig. 6 worst point", True),
    ("salient", "salient components", None),
    ("metric_energy_90", "components with 90% of the energy", True),
    ("mean_order", "mean order |S| of the salient", None),
    ("l1_total", "total L1 of the components", True),
    ("subsets_meeting_constraint", "subsets meeting the constraint", False),
    ("residual_max", "KKT residual at the end", True),
    ("wall_seconds", "seconds", True),
)
RANGE = re.compile(r"(\d+)\.\.(\d+)")


def candidate_layers(layers: list[str]) -> list[str]:
    """The cuts ``auto`` sweeps: every layer that is not a block inside a sampler step (a GAN's
    blocks, a diffusion model's ``step=K`` latents)."""
    return [layer for layer in layers if "@" not in layer]


def parse_layers(text: str, layers: list[str]) -> list[str]:
    """``"block1,block2"``, ``"step=1..3"`` (a range), ``"up_blocks.*@step=0"`` (a pattern over
    the model's cuts) or ``"auto"`` (:func:`candidate_layers`) -> cuts, each once, in order; a
    cut the model lacks is an error naming the valid ones."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "auto":
            out += candidate_layers(layers)
            continue
        match = RANGE.search(part)
        if match:
            lo, hi = int(match[1]), int(match[2])
            if hi < lo:
                msg = f"--layers {part!r}: the range runs backwards; write {match[2]}..{match[1]}"
                raise ValueError(msg)
            out += [part[: match.start()] + str(k) + part[match.end() :] for k in range(lo, hi + 1)]
        elif any(ch in part for ch in "*?["):
            found = fnmatch.filter(layers, part)
            if not found:
                msg = (
                    f"--layers {part!r} matches none of the model's cuts: {', '.join(layers[:12])}"
                )
                raise ValueError(msg)
            out += found
        else:
            out.append(part)
    unknown = [layer for layer in out if layer not in layers]
    if unknown:
        msg = (
            f"--layers: {', '.join(unknown[:5])} not among the model's cuts "
            f"({', '.join(layers[:12])}{', ...' if len(layers) > 12 else ''}; "
            "`regprim models --model M` lists them)"
        )
        raise ValueError(msg)
    if not out:
        msg = f"--layers {text!r} names no cut; give e.g. block1,block2 or step=1..3"
        raise ValueError(msg)
    return list(dict.fromkeys(out))


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The rule of the module docstring: the chosen row and why."""
    done = [
        r
        for r in rows
        if r["status"] in ("ok", "done before") and r.get("metric_leakage") is not None
    ]
    if not done:
        return None, "no cut was explained"
    converged = [r for r in done if r["converged"] and r["subsets_meeting_constraint"] >= 1.0]

    def key(r):
        return (r["metric_leakage"], r.get("metric_irrelevant_components_worst") or 0.0)

    if converged:
        best = min(converged, key=key)
        why = f"the most exclusive of the {len(converged)} converged cuts (lowest median leakage)"
    else:
        best = min(done, key=key)
        why = "no cut converged: the most exclusive of all (raise --or-steps and sweep again)"
    return best, why


def sweep(
    cfg: ExplainConfig,
    layers: str | list[str],
    out: str | Path,
    workers: int = 1,
    use_ray: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Explain ``cfg``'s image at every cut of ``layers`` (module docstring); ``sweep.json``'s
    content: ``{"cuts": [...], "rows": [...], "chosen": layer, "why": str}``."""
    gen = generator_of(cfg)
    cuts = parse_layers(layers, list(gen.layers)) if isinstance(layers, str) else list(layers)
    out = Path(out)
    if not (out / CUTS).is_dir():
        folders.check_output(out, False, rf.CONFIG)
    same_settings(out, cfg, varying=("layer",), sub=CUTS)  # a cut done before is this image's
    out.mkdir(parents=True, exist_ok=True)
    items = [Item(cfg.seed, cfg.class_index, layer) for layer in cuts]
    with folders.lock(out):
        rows = list(
            run_items(
                cfg.to_dict(), items, out, True, min(workers, len(items)), use_ray, progress, CUTS
            )
        )
        order = {item.name: k for k, item in enumerate(items)}
        rows.sort(key=lambda r: order[r["image"]])
        best, why = choose(rows)
        record = {
            "settings": json.loads(json.dumps(cfg.to_dict())),
            "cuts": cuts,
            "chosen": None if best is None else best["layer"],
            "why": why,
            "rows": rows,
        }
        write_sweep(out, record)
    return record


def write_sweep(out: Path, record: dict[str, Any]) -> None:
    """``sweep.parquet``, ``sweep.png`` and ``sweep.json`` (last: it marks a finished sweep)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from regprim.present.figures import png, sweep_figure

    rows = record["rows"]
    keys = dict.fromkeys(k for row in rows for k in row)
    table = pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in rows])
    rf.atomic_write(out / TABLE, lambda path: pq.write_table(table, path))
    rf.atomic_write(out / FIGURE, png(sweep_figure(rows, COLUMNS, record["chosen"])[0]))
    rf.atomic_write(out / SWEEP, json.dumps(record, indent=2))


def explain_auto(
    cfg: ExplainConfig, out: str | Path, overwrite: bool = False, progress: bool = True
):
    """``layer="auto"``: sweep :func:`candidate_layers` into ``OUT.sweep`` beside ``out`` and
    write the chosen cut's run folder to ``out`` (copied, not solved again); the run."""
    import dataclasses

    out = Path(out).resolve()
    folders.check_output(out, overwrite, rf.CONFIG)  # before the sweep's work
    record = sweep(
        dataclasses.replace(cfg, layer=None),
        "auto",
        out.parent / f"{out.name}.sweep",
        progress=progress,
    )
    if record["chosen"] is None:
        msg = f"layer auto: {record['why']}; see {out.name}.sweep/sweep.json"
        raise ValueError(msg)
    chosen = out.parent / f"{out.name}.sweep" / CUTS / Item(0, None, record["chosen"]).name
    files = {
        p.name: (lambda path, src=p: shutil.copyfile(src, path))
        for p in sorted(chosen.iterdir())
        if p.is_file() and p.name != rf.MANIFEST
    }
    with folders.lock(out):
        folders.write_folder(out, files, overwrite, rf.CONFIG)
    if progress:
        print(f"regprim: layer auto chose {record['chosen']}: {record['why']}", file=sys.stderr)
    return rf.load_run(out)
