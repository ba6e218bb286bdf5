"""Edits, transplants and inversion on dcgan-faces: the table of docs/control.md.

    python benchmarks/control.py                 # n = 9 and n = 36, two images each
    python benchmarks/control.py --ns 9 --drops 5 --inversions 2   # a quick look

For each n, images (seeds) 0 and 1 are explained with the default solver. Edits:
- drop: each of the ``--drops`` largest components of each image, against naive feature masking
  (f0 at the feature positions under the same cells);
- transplant: image 0 receives, one player cell at a time, the components of image 1 that meet
  that cell, against feature masking (image 1's feature under the cells) and pixel pasting.
Locality is the summed absolute change outside the edited cells over that inside, and the same on
the edit's region (the cells plus the action regions of the components it changes; docs/metrics.md,
"Edits"); agreement is the squared distance to the donor's pixels on the cells over the
recipient's. The first ``--inversions`` edits of each kind are inverted to a code (warm start
from the recipient's code plus random starts): the relative feature residual of each way.
Then: inversion of the unedited features from random starts only (z exists), and the latency of
one live render (`regprim serve`'s /api/edit and /api/reconstruct, PNG encoding included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from fastapi.testclient import TestClient

from regprim import ExplainConfig, explain, load_model
from regprim.app.serve import create_app
from regprim.control.edit import Edit, apply
from regprim.control.inversion import invert
from regprim.explanation.summary import cpu_model

CENTRE = [14, 15, 20, 21, 8, 9, 26, 27, 13, 16]  # face cells of the 6x6 grid, for n = 36


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(xs):
    return f"{median(xs):.3g} [{min(xs):.2g}, {max(xs):.2g}]" if xs else "-"


def inverted(gen, run, feature) -> float:
    return invert(
        gen, feature, run.f0, run.code, restarts=4, max_steps=600, progress=False
    ).residual


def measure(n: int, args, gen) -> list[str]:
    players = "all" if n == 36 else None
    runs = []
    for seed in (0, 1):
        start = time.perf_counter()
        cfg = ExplainConfig(seed=seed, players=players, n=None if n == 36 else n)
        runs.append(explain(cfg, generator=gen, progress=False, verify=False))
        print(f"n = {n}, seed {seed}: explained in {time.perf_counter() - start:.1f} s", flush=True)
    rows: dict[str, dict[str, list[float]]] = {}

    def add(kind, way, key, value):
        rows.setdefault(f"{kind} | {way}", {}).setdefault(key, []).append(value)

    for r, run in enumerate(runs):  # drops
        for j, mask in enumerate(run.table.top_k(args.drops)):
            res = apply(Edit(run).drop(masks=[mask]), gen)
            for way, m in {"primitives": res.metrics, **res.baselines}.items():
                add("drop", way, "locality", m["locality"])
                add("drop", way, "region", m["locality_region"])
            add("drop", "primitives", "cells", len(res.region))
            if r == 0 and j < args.inversions:
                for way, feature in res.features.items():
                    add("drop", way, "residual", inverted(gen, run, feature))
    recipient, donor = runs
    cells = recipient.players if n != 36 else CENTRE
    for j, cell in enumerate(cells[: args.drops]):  # transplants, one cell at a time
        res = apply(Edit(recipient).transplant(donor, [cell]), gen)
        for way, m in {"primitives": res.metrics, **res.baselines}.items():
            add("transplant", way, "locality", m["locality"])
            add("transplant", way, "region", m["locality_region"])
            add("transplant", way, "agreement", m["agreement"])
        add("transplant", "primitives", "cells", len(res.region))
        if j < args.inversions:
            for way, feature in res.features.items():
                add("transplant", way, "residual", inverted(gen, recipient, feature))
    lines = []
    for name, m in rows.items():
        kind, way = name.split(" | ")
        count = len(m["locality"])
        lines.append(
            f"| {n} | {kind} | {way} | {count} | {fmt(m.get('cells', []))} | "
            f"{fmt(m['locality'])} | {fmt(m['region'])} | "
            f"{fmt(m.get('agreement', []))} | {fmt(m.get('residual', []))} |"
        )
    return lines, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[9, 36])
    parser.add_argument("--drops", type=int, default=10, help="edits of each kind per image")
    parser.add_argument("--inversions", type=int, default=3, help="edits inverted per kind")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    gen = load_model("dcgan-faces")
    table = [
        "| n | edit | way | edits | region cells | locality, median [min, max] | locality on the "
        "region | agreement | inversion residual |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    kept = {}
    for n in args.ns:
        lines, runs = measure(n, args, gen)
        table += lines
        kept[n] = runs
    print("\n".join(table))
    run = kept[args.ns[0]][0]
    for r in kept[args.ns[0]]:  # z exists: invert the unedited feature from random starts only
        start = time.perf_counter()
        inv = invert(gen, r.f, r.f0, None, restarts=8, max_steps=1000, progress=False)
        print(
            f"inversion of the unedited feature, seed {r.config['seed']}, random starts: residual "
            f"{inv.residual:.2g}, image agreement {inv.image_agreement:.2g}, {inv.steps} steps, "
            f"{time.perf_counter() - start:.1f} s"
        )
    client = TestClient(create_app([run]))
    mask = run.table.top_k(1)[0]
    for path, body in (
        ("/api/edit", {"run": 0, "weights": {str(mask): 0}}),
        ("/api/reconstruct", {"run": 0, "cells": run.players[:3]}),
    ):
        client.post(path, json=body)  # warm
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert client.post(path, json=body).status_code == 200
            times.append(time.perf_counter() - start)
        print(f"latency {path} (dcgan-faces, n = {run.n}): median {1e3 * median(times):.1f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
