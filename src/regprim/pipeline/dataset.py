"""Many images: one run folder per image under one dataset folder, tables, consistency.

``regprim explain-many --seeds 0-99 --out DATA`` explains every image with the same settings and
writes (format: docs/run-folder.md, "Dataset folders")::

    DATA/images/<image>/      one run folder per image (seed-0007, class-green-seed-0007, ...)
    DATA/images.parquet       one row per image: its seed and class, status, wall time, metrics
    DATA/components.parquet   one row per salient component: image, action set, order, norm
    DATA/transfer.json        cross-image consistency (below)
    DATA/report.html          distributions over images, where primitives act, the best and
                              the worst images linked to their own reports

It resumes: an image whose run folder is complete is skipped, one that was killed restarts
(from its checkpoint). A failing image is recorded with its error, and the others go on; a disk
that fills or fails (``DISK_ERRORS``) fails its image with the file and the fix and stops the
images not yet started (``not started``), since each would fail the same way after its solve;
tables that cannot be written raise :class:`TablesNotWritten`, which holds the rows. Nothing
finished is lost: the same command, with room on the disk, goes on where it stopped.

Execution: images one after another by default; ``workers`` processes on this machine; or Ray
(``ray=True``, or ``RAY_ADDRESS`` set): every image a Ray task with its CPU/GPU request,
``ray.init()`` joining the cluster at ``RAY_ADDRESS`` or starting a local one. Each worker
process loads the generator once and keeps it.

Transfer ratio (the paper's later version): for images A and B, the share of A's top-``l_a``
salient components whose action set (as grid cells) is among B's top-``l_b``, averaged over
ordered pairs; with the cosine of the matched components' feature directions.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regprim.config import ExplainConfig
from regprim.storage import folders
from regprim.storage import run_folder as rf

IMAGES, IMAGES_TABLE, COMPONENTS_TABLE = "images", "images.parquet", "components.parquet"
SETTINGS = "dataset.json"  # the one configuration of a dataset folder; images differ by seed
PER_IMAGE = ("seed", "class_index", "image")  # settings that differ between a dataset's images
PHOTOS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # the files `--images DIR` explains
TRANSFER, DATASET_REPORT, ATLAS_TABLE = "transfer.json", "report.html", "atlas.parquet"
# symmetric top-k in top-k, and the later paper's asymmetric 20 in 100 beside them
TRANSFER_PAIRS = ((5, 5), (10, 10), (20, 20), (20, 100))
GALLERY_SETS, GALLERY_IMAGES = 6, 4  # the atlas's gallery: recurring sets, images of each
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}  # the disk, not the image
DISK_FIX = (
    "free space on that disk (or choose another --out) and run the same command again: "
    "finished images are kept"
)


class TablesNotWritten(OSError):
    """The images ran but the dataset's tables could not be written; ``rows`` holds them."""

    def __init__(self, err: OSError, rows: list[dict[str, Any]]):
        super().__init__(err.errno, f"{err.strerror or err}; {DISK_FIX}", err.filename)
        self.rows = rows


_GENERATORS: dict[str, Any] = {}  # per worker process: the generator, loaded once


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its code's seed and, for conditional models, its class; or one
    cut of a sweep (``layer``; :mod:`regprim.pipeline.sweep`)."""

    seed: int
    class_index: int | str | None = None
    layer: str | None = None
    image: str | None = None  # a photo (``--images DIR``): its nearest generated image

    @property
    def name(self) -> str:
        if self.layer is not None:
            return "cut-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.layer)
        if self.image is not None:
            return "photo-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.image).stem)
        label = "" if self.class_index is None else f"class-{self.class_index}-"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}seed-{self.seed:04d}")


MAX_SEEDS = 100_000  # more images than a dataset folder is meant to hold


def parse_seeds(text: str) -> list[int]:
    """``"0-99"``, ``"3,5,8"`` or both (``"0-9,20"``) -> seeds, each once, in the order given.
    A backwards range (``5-2``), a repeated seed and more than ``MAX_SEEDS`` seeds are errors."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            lo, hi = int(low), int(high or low)
        except ValueError:
            msg = f"seeds {text!r} must be integers and ranges, e.g. 0-99 or 1,5,9"
            raise ValueError(msg) from None
        if hi < lo:
            msg = f"seed range {part!r} runs backwards; write it low-high, e.g. {hi}-{lo}"
            raise ValueError(msg)
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            msg = f"seeds {text!r} name more than {MAX_SEEDS} images; split the dataset"
            raise ValueError(msg)
        seeds += range(lo, hi + 1)
    repeated = sorted(s for s, k in Counter(seeds).items() if k > 1)
    if repeated:
        msg = f"seeds {text!r} name seed(s) {repeated[:5]} more than once; list each once"
        raise ValueError(msg)
    if not seeds:
        msg = f"seeds {text!r} name no seed; give e.g. 0-99"
        raise ValueError(msg)
    return seeds


def items_of(seeds: list[int], classes: list[str] | None = None) -> list[Item]:
    """Every seed, for every class when classes are given."""
    return [Item(s, c) for c in (classes or [None]) for s in seeds]


def photo_items(folder: str | Path, classes: list[str] | None = None) -> list[Item]:
    """Every photo in ``folder`` (``PHOTOS``, sorted by name), for every class when given; each
    is explained as its nearest generated image (``ExplainConfig.image``)."""
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"--images {folder} is not a folder; give a folder of PNG or JPEG photos"
        raise NotADirectoryError(msg)
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTOS and p.is_file())
    if not photos:
        msg = f"--images {folder} holds no photo ({', '.join(PHOTOS)})"
        raise ValueError(msg)
    names = Counter(p.stem for p in photos)
    twice = sorted(n for n, k in names.items() if k > 1)
    if twice:
        msg = f"--images {folder}: {twice[:3]} have the same name but another suffix; rename them"
        raise ValueError(msg)
    return [Item(0, c, image=str(p.resolve())) for c in (classes or [None]) for p in photos]


def generator_of(cfg: ExplainConfig):
    """The generator of ``cfg`` in this process, loaded once; another cut of a loaded model is
    that model re-cut (a sweep loads its model once)."""
    model = [cfg.model, cfg.prompt, cfg.negative_prompt, cfg.weights, cfg.device]
    key = json.dumps([*model, cfg.layer])
    if key not in _GENERATORS:
        loaded = next((g for k, g in _GENERATORS.items() if json.loads(k)[:-1] == model), None)
        if loaded is not None and cfg.layer is not None:
            try:
                _GENERATORS[key] = loaded.cut_at(cfg.layer)
                return _GENERATORS[key]
            except NotImplementedError:
                pass
        from regprim.pipeline.explain import load_generator  # model code only in workers

        _GENERATORS[key] = load_generator(cfg)
    return _GENERATORS[key]


def explain_one(config: dict[str, Any], item: Item, folder: str, verify: bool) -> dict[str, Any]:
    """Explain one image into ``folder`` (skipped when it holds a complete run): its row of
    ``images.parquet``. Errors become the row's status, never an exception."""
    from regprim.pipeline.explain import explain

    out = Path(folder)
    start = time.perf_counter()
    row: dict[str, Any] = {
        "image": item.name,
        "seed": item.seed,
        "class": None if item.class_index is None else str(item.class_index),
    } | ({} if item.layer is None else {"layer": item.layer})
    row |= {} if item.image is None else {"photo": item.image}
    try:
        if (out / rf.MANIFEST).is_file():
            run = rf.load_run(out)
            status = "done before"
        else:
            cut = {} if item.layer is None else {"layer": item.layer}
            photo = {} if item.image is None else {"image": item.image}
            cfg = ExplainConfig.from_dict(
                config | {"seed": item.seed, "class_index": item.class_index} | cut | photo
            )
            run = explain(
                cfg,
                out=out,
                overwrite=(out / rf.CONFIG).is_file(),
                progress=False,
                generator=generator_of(cfg),
                verify=verify,
            )
            status = "ok"
    except Exception as err:  # recorded; the other images go on
        disk = isinstance(err, OSError) and err.errno in DISK_ERRORS
        return row | {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}" + (f"; {DISK_FIX}" if disk else ""),
            "wall_seconds": time.perf_counter() - start,
            "disk": disk,  # read and dropped by run_items
        }
    s = run.summary
    row |= {
        "status": status,
        "error": None,
        "wall_seconds": s["wall_seconds"],
        "n": s["n"],
        "players": s["players"],
        "salient": len(s["salient"]),
        "subsets_meeting_constraint": s["subsets_meeting_constraint"],
        "universal_matching_max_rel_residual": s["universal_matching_max_rel_residual"],
        "objective": s.get("objective"),
        "path": str(out.relative_to(out.parent.parent)),
    }
    if item.layer is not None:  # a sweep's row: what changes from cut to cut
        row |= {
            "feature_shape": s["feature_shape"],
            "mean_order": sum(k.bit_count() for k in run.salient) / max(len(run.salient), 1),
            "l1_total": float(run.table.values.abs().sum()),
            "residual_max": s["residual_max"],
            "converged": s["subsets_converged"] >= 1.0,
        }
    if item.image is not None:
        row["photo_rms_residual"] = s["image_fit"]["rms_residual"]
    row |= {f"metric_{m.name}": m.value for m in run.metrics or []}
    return row


def _pool_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_items(
    config: dict[str, Any],
    items: list[Item],
    out: Path,
    verify: bool,
    workers: int,
    use_ray: bool,
    progress: bool,
    sub: str = IMAGES,
) -> Iterator[dict[str, Any]]:
    """Rows of every image (run folders under ``out / sub``), as they finish (in this process,
    a local pool, or Ray); after a disk error, the images not yet started as ``not started``
    (Ray: the rest still run)."""
    from tqdm.auto import tqdm

    folders = [str(out / sub / item.name) for item in items]
    what = "cuts" if sub != IMAGES else "images"
    bar = tqdm(total=len(items), desc=what, unit=what[:-1], disable=not progress)
    full: dict[str, Any] = {}  # the first disk error's row

    def finished(row: dict[str, Any]) -> dict[str, Any]:
        bar.update(1)
        if row.pop("disk", False) and not full:
            full.update(row)
        return row

    def not_started(item: Item) -> dict[str, Any]:
        error = f"not started: {full['image']} found the disk failing ({full['error']})"
        label = None if item.class_index is None else str(item.class_index)
        row = {"image": item.name, "seed": item.seed, "class": label}
        return row | {"status": "not started", "error": error}

    if use_ray:
        import ray

        if not ray.is_initialized():  # "local": a new instance, never a cluster found on disk
            address = os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as err:
                msg = (
                    f"Ray at {address} refused the connection ({err}); a cluster started by "
                    "`ray start --head` asks for a token unless RAY_AUTH_MODE=disabled was set "
                    "when it started (docs/performance.md, Ray)"
                )
                raise ConnectionError(msg) from err
        gpus = 1 if str(config.get("device", "cpu")).startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(explain_one)
        pending = [task.remote(config, i, f, verify) for i, f in zip(items, folders, strict=True)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield finished(ray.get(done[0]))
    elif workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, initializer=_pool_init, initargs=(threads,)) as pool:
            jobs = [
                pool.submit(explain_one, config, i, f, verify)
                for i, f in zip(items, folders, strict=True)
            ]
            for item, job in zip(items, jobs, strict=True):
                if full and job.cancel():
                    yield not_started(item)
                else:
                    yield finished(job.result())
    else:
        for item, folder in zip(items, folders, strict=True):
            yield not_started(item) if full else finished(explain_one(config, item, folder, verify))
    bar.close()


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def storage_note(cfg: ExplainConfig, items: list[Item], out: Path) -> str:
    """What the images still to explain will take on disk at most, said before they start
    (the generator is loaded here once: a worker of this process reuses it)."""
    gen = generator_of(cfg)
    dims = gen.feature_dims() or math.prod(gen.shapes()[0])
    each = rf.run_bytes(cfg.players_count, dims, cfg.denoise, cfg.storage)
    todo = sum(not (out / IMAGES / i.name / rf.MANIFEST).is_file() for i in items)
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free
    text = (
        f"{todo} of {len(items)} images to explain, each at most {each / 2**20:,.1f} MiB on disk "
        f"({todo * each / 2**30:,.2f} GiB in all, {free / 2**30:,.1f} GiB free; "
        f"{cfg.storage} storage)"
    )
    light = rf.run_bytes(cfg.players_count, dims, storage="light")
    if cfg.storage == "full" and light < each:
        text += f"; --storage light keeps at most {light / 2**20:,.1f} MiB per image"
    return text


def same_settings(
    out: Path, cfg: ExplainConfig, varying: tuple[str, ...] = PER_IMAGE, sub: str = IMAGES
) -> None:
    """A dataset (or sweep) folder holds one configuration: record it the first time
    (``dataset.json``; all but the ``varying`` settings), and refuse settings that differ later,
    naming them (images explained with other settings were once reused, and transfer ratios
    computed across them). ``sub``: the folder of its runs."""
    as_json = json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, as the file holds them
    settings = {k: v for k, v in as_json.items() if k not in varying}
    path = out / SETTINGS
    if not path.is_file():
        if (out / sub).is_dir() and any((out / sub).iterdir()):
            msg = (
                f"dataset folder {out} has images but no {SETTINGS} (made by an older regprim); "
                "its settings cannot be checked: explain into a new --out"
            )
            raise ValueError(msg)
        out.mkdir(parents=True, exist_ok=True)
        rf.atomic_write(path, json.dumps(settings, indent=2, sort_keys=True))
        return
    old = json.loads(path.read_text())
    differ = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        msg = (
            f"dataset folder {out} was made with other settings ({shown}); a dataset holds one "
            "configuration: use the same options or another --out"
        )
        raise ValueError(msg)


def check_ray_address(address: str | None) -> None:
    """Fail at once, not after minutes, when ``RAY_ADDRESS`` names a cluster nobody answers at."""
    if not address or address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError):
        msg = (
            f"RAY_ADDRESS={address!r}: no Ray cluster answers there; start one with "
            "`ray start --head --node-ip-address 127.0.0.1` (RAY_AUTH_MODE=disabled for a test "
            "cluster) and set RAY_ADDRESS to the address it prints, or unset RAY_ADDRESS to "
            "start a local one"
        )
        raise ConnectionError(msg) from None


def explain_many(
    cfg: ExplainConfig,
    items: list[Item],
    out: str | Path,
    workers: int = 1,
    use_ray: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Explain every item with the settings of ``cfg`` (module docstring); the image rows."""
    if not items:
        msg = "no images to explain; give seeds, e.g. --seeds 0-99"
        raise ValueError(msg)
    if workers < 1:
        msg = f"workers={workers} must be at least 1"
        raise ValueError(msg)
    classes = {i.class_index for i in items if i.class_index is not None}
    if classes:  # a class the model does not have fails here, not once per image
        gen = generator_of(cfg)
        for c in sorted(map(str, classes)):
            gen.class_index(c)
    out = Path(out)
    if not (out / IMAGES).is_dir():  # a new dataset: its folder must be new or empty
        folders.check_output(out, False, rf.CONFIG)
    same_settings(out, cfg)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    use_ray = use_ray or bool(os.environ.get("RAY_ADDRESS"))
    if use_ray:
        check_ray_address(os.environ.get("RAY_ADDRESS"))
    workers = min(workers, len(items))  # never more processes than images
    if progress:
        print(f"regprim: {storage_note(cfg, items, out)}", file=sys.stderr)
    with folders.lock(out):  # one explain-many per dataset folder at a time
        rows = list(run_items(cfg.to_dict(), items, out, verify, workers, use_ray, progress))
        order = {item.name: k for k, item in enumerate(items)}
        rows.sort(key=lambda r: order[r["image"]])
        try:
            write_tables(out, rows)
        except OSError as err:
            raise TablesNotWritten(err, rows) from err
    return rows


Top = dict[str, list[tuple[frozenset, torch.Tensor]]]  # image -> (action set, component)


def read_images(out: Path, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Top]:
    """One pass over the finished images' run folders: the rows of ``components.parquet`` (one
    per salient component) and each image's largest components, for :func:`transfer_ratios`."""
    table: list[dict[str, Any]] = []
    top: Top = {}
    deepest = max(max(pair) for pair in TRANSFER_PAIRS)
    for row in rows:
        if row["status"] not in ("ok", "done before"):
            continue
        run = rf.load_run(out / row["path"])  # with metrics.json: the leakage column
        leak = next((m for m in run.metrics or [] if m.name == "leakage"), None)
        ratios = (
            dict(zip(leak.details["components"], leak.details["ratios"], strict=True))
            if leak
            else {}
        )
        for rank, mask in enumerate(run.salient):
            values = ratios.get(mask)
            table.append(
                {
                    "image": row["image"],
                    "rank": rank,
                    "mask": mask,
                    "cells": run.cells(mask),
                    "order": mask.bit_count(),
                    "norm": run.norm(mask),
                    "leakage": None if values is None else float(torch.tensor(values).median()),
                }
            )
        masks = run.ranked[:deepest]
        top[row["image"]] = [
            (frozenset(run.cells(m)), v.flatten())
            for m, v in zip(masks, run.component(masks), strict=True)
        ]
    return table, top


def region_name(cells: list[int], cols: int) -> str:
    """Where an action set acts, in words a person can refer to: its grid ids, rows and
    columns (``cells 14,15: row 2, columns 2-3``)."""
    rows = sorted({c // cols for c in cells})
    columns = sorted({c % cols for c in cells})

    def span(name: str, values: list[int]) -> str:
        if len(values) == 1:
            return f"{name} {values[0]}"
        whole = values == list(range(values[0], values[-1] + 1))
        return f"{name}s " + (f"{values[0]}-{values[-1]}" if whole else ",".join(map(str, values)))

    label = "cell" if len(cells) == 1 else "cells"
    return f"{label} {','.join(map(str, cells))}: {span('row', rows)}, {span('column', columns)}"


def atlas_table(components: list[dict[str, Any]], images: int, cols: int) -> list[dict[str, Any]]:
    """The action sets that are salient across a dataset's ``images``, most recurring first:
    in how many images (and which share), their mean norm and rank, median leakage, named by
    :func:`region_name`."""
    by_set: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for c in components:
        by_set.setdefault(tuple(sorted(c["cells"])), []).append(c)
    table = []
    for cells, found in by_set.items():
        leaks = sorted(c["leakage"] for c in found if c.get("leakage") is not None)
        table.append(
            {
                "cells": list(cells),
                "name": region_name(list(cells), cols),
                "order": len(cells),
                "images": len({c["image"] for c in found}),
                "share": len({c["image"] for c in found}) / max(images, 1),
                "mean_norm": sum(c["norm"] for c in found) / len(found),
                "mean_rank": sum(c["rank"] for c in found) / len(found),
                "median_leakage": leaks[len(leaks) // 2] if leaks else None,
                "examples": [
                    c["image"] for c in sorted(found, key=lambda c: -c["norm"])[:GALLERY_IMAGES]
                ],
            }
        )
    return sorted(table, key=lambda r: (-r["images"], -r["mean_norm"]))


def gallery(out: Path, atlas: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[list]:
    """For the most recurring sets, their examples: (image name, target, ``g(f0 + Δf_k)``,
    ``g(f0)``, run) rendered with the dataset's generator."""
    settings = json.loads((out / SETTINGS).read_text())
    paths = {r["image"]: r["path"] for r in rows if r.get("path")}
    shown: list[list] = []
    gen = None
    for entry in atlas[:GALLERY_SETS]:
        examples = []
        for image in entry["examples"]:
            run = rf.load_run(out / paths[image], derived=False)
            if gen is None:
                gen = generator_of(ExplainConfig.from_dict(settings | {"layer": run.layer}))
            mask = run.bitmask(entry["cells"])
            features = torch.stack([run.f0 + run.component(mask), run.f0])
            rendered = gen.render(features, run.code[None].to(gen.device)).cpu()
            examples.append((image, run.image, rendered[0], rendered[1], run))
        shown.append(examples)
    return shown


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    """``images.parquet``, ``components.parquet``, ``atlas.parquet``, ``transfer.json`` and
    ``report.html``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table: list[dict[str, Any]]) -> Callable[[Path], None]:
        keys = dict.fromkeys(k for row in table for k in row)  # a failed row has fewer
        whole = [{k: row.get(k) for k in keys} for row in table]
        return lambda path: pq.write_table(pa.Table.from_pylist(whole), path)

    components, top = read_images(out, rows)
    n = max((row.get("n") or 0 for row in rows), default=0)
    transfer = transfer_ratios(top, n)
    rf.atomic_write(out / IMAGES_TABLE, parquet(rows))
    rf.atomic_write(out / COMPONENTS_TABLE, parquet(components))
    rf.atomic_write(out / TRANSFER, json.dumps(transfer, indent=2))
    explained = sum(r["status"] in ("ok", "done before") for r in rows)
    cols = json.loads((out / SETTINGS).read_text())["grid"][1]
    atlas = atlas_table(components, explained, cols)
    rf.atomic_write(out / ATLAS_TABLE, parquet(atlas))
    from regprim.present.dataset_report import dataset_report

    page = dataset_report(out, rows, components, transfer, atlas, gallery(out, atlas, rows))
    rf.atomic_write(out / DATASET_REPORT, page)


def transfer_ratios(top: Top, n: int) -> dict[str, Any]:
    """Transfer ratio of the top components' action sets between every ordered pair of
    images (``top`` from :func:`read_images`, ``n`` players), for each (l_a, l_b) of
    ``TRANSFER_PAIRS``, and the cosine of matched components."""
    names = list(top)
    result: dict[str, Any] = {"images": len(names)}
    for la, lb in TRANSFER_PAIRS:
        lookup = {b: dict(top[b][:lb]) for b in names}
        shares, cosines = [], []
        for a in names:
            mine = top[a][:la]
            for b in names:
                if a == b:
                    continue
                hits = [(v, lookup[b][s]) for s, v in mine if s in lookup[b]]
                shares.append(len(hits) / max(len(mine), 1))
                cosines += [
                    float(torch.nn.functional.cosine_similarity(u, w, dim=0)) for u, w in hits
                ]
        result[f"top{la}_in_top{lb}"] = {
            "transfer_ratio": sum(shares) / len(shares) if shares else float("nan"),
            "matched_cosine": sum(cosines) / len(cosines) if cosines else float("nan"),
            "pairs": len(shares),
            # the share expected if each image's top action sets were drawn at random
            "chance": min(lb / (2**n - 1), 1.0) if n else float("nan"),
        }
    return result


def load_tables(out: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The image and component rows of a dataset folder."""
    import pyarrow.parquet as pq

    out = Path(out)
    return (
        pq.read_table(out / IMAGES_TABLE).to_pylist(),
        pq.read_table(out / COMPONENTS_TABLE).to_pylist(),
    )
