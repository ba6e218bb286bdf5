"""``regprim serve RUN [RUN ...]``: a local web app that renders with the generator on request.

One process holds each run's generator; the page (``templates/serve.html``, served from the
package) asks the JSON API below, and every answer is rendered live:

- ``GET /api/runs``: the loaded runs (model, players, grid, the target image, the largest
  components with their cells and norms);
- ``POST /api/reconstruct``: Algorithm 2 for any set of player cells, at any n;
- ``POST /api/edit``: weights per component and an optional transplant from another loaded
  run (:class:`regprim.control.edit.Edit`): the edited image, its difference and the edit metrics;
- ``POST /api/invert`` and ``GET /api/jobs/{id}``: code inversion in the background, with
  progress;
- ``POST /api/save``: the edit as an edit folder under the ``--edits`` folder (a plain name,
  never a path the request chooses).

Requests are validated by schema (a bad one gets a 4xx JSON error that names the field); the
app binds to 127.0.0.1 unless told otherwise; a lock per generator makes concurrent requests
safe.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from regprim.control.edit import Edit, apply, save_edit
from regprim.control.inversion import invert
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator
from regprim.present.assets import script, template
from regprim.present.figures import to_rgb

LISTED = 60  # components listed per run (the largest)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def png_data(image: torch.Tensor, value_range) -> str:
    """A ``(C, H, W)`` image as a ``data:image/png;base64`` URL."""
    rgb = (to_rgb(image, value_range) * 255).round().astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heat_data(before: torch.Tensor, after: torch.Tensor) -> str:
    """The absolute change summed over channels, as a grey PNG data URL (white = largest)."""
    diff = (after - before).abs().sum(0)
    scaled = diff / diff.max().clamp_min(1e-12)
    return png_data(scaled[None], (0.0, 1.0))


@dataclass
class Loaded:
    run: Run
    gen: SplitGenerator
    lock: threading.Lock = field(default_factory=threading.Lock)


class Transplant(BaseModel):
    donor: int = Field(ge=0, description="index of the donor run in /api/runs")
    cells: list[int] = Field(min_length=1, description="player cells to take from the donor")


class ReconstructRequest(BaseModel):
    run: int = Field(ge=0)
    cells: list[int] = Field(min_length=1, max_length=4096)
    salient_only: bool = True


class EditRequest(BaseModel):
    run: int = Field(ge=0)
    weights: dict[int, float] = Field(
        default_factory=dict, description="weight per component (action set bitmask)"
    )
    transplant: Transplant | None = None


class SaveRequest(EditRequest):
    name: str = Field(description="folder name under the edits folder (letters, digits, _.-)")
    invert: bool = False


class App:
    """The loaded runs, their generators and the inversion jobs."""

    def __init__(self, runs: list[Run], edits: Path, device: str = "cpu") -> None:
        self.loaded = [Loaded(run, run.generator(device)) for run in runs]
        self.edits = edits
        self.jobs: dict[str, dict[str, Any]] = {}

    def get(self, index: int) -> Loaded:
        if index >= len(self.loaded):
            raise HTTPException(404, f"run: no run {index}; {len(self.loaded)} are loaded")
        return self.loaded[index]

    def edit_of(self, req: EditRequest) -> tuple[Loaded, Edit]:
        item = self.get(req.run)
        edit = Edit(item.run)
        try:
            for mask, weight in sorted(req.weights.items()):
                if weight != 1:
                    edit.scale(weight, masks=[mask])
        except ValueError as err:
            raise HTTPException(422, f"weights: {err}") from None
        if req.transplant is not None:
            donor = self.get(req.transplant.donor).run
            try:
                edit.transplant(donor, req.transplant.cells)
            except ValueError as err:
                raise HTTPException(422, f"transplant: {err}") from None
        return item, edit

    def describe(self, index: int, item: Loaded) -> dict[str, Any]:
        run = item.run
        return {
            "index": index,
            "path": str(run.path) if run.path else None,
            "model": run.model,
            "layer": run.layer,
            "n": run.n,
            "players": run.players,
            "grid": [run.grid.rows, run.grid.cols],
            "edges": [run.grid.row_edges(), run.grid.col_edges()],
            "size": list(run.image.shape[1:]),
            "image": png_data(run.image, run.value_range),
            "components": [
                {"mask": m, "cells": run.cells(m), "norm": run.norm(m)}
                for m in run.table.top_k(LISTED)
            ],
        }

    def runs(self) -> list[dict[str, Any]]:
        return [self.describe(i, item) for i, item in enumerate(self.loaded)]

    def reconstruct(self, req: ReconstructRequest) -> dict[str, Any]:
        item = self.get(req.run)
        run = item.run
        try:
            run.bitmask(req.cells)
        except ValueError as err:
            raise HTTPException(422, f"cells: {err}") from None
        with item.lock:
            image, used = run.reconstruct(req.cells, item.gen, salient_only=req.salient_only)
        return {
            "image": png_data(image.cpu(), run.value_range),
            "components": used,
            "cells": sorted(req.cells),
        }

    def edit(self, req: EditRequest) -> dict[str, Any]:
        item, e = self.edit_of(req)
        with item.lock:
            result = apply(e, item.gen)
        shown = {"primitives": result.metrics, **result.baselines}
        numbers = {k: {m: v for m, v in b.items() if m != "cell_change"} for k, b in shown.items()}
        return {
            "image": png_data(result.image, item.run.value_range),
            "difference": heat_data(result.before, result.image),
            "cells": result.cells,
            "metrics": numbers.pop("primitives"),
            "baselines": numbers,
        }

    def start_inversion(self, req: EditRequest) -> dict[str, str]:
        item, e = self.edit_of(req)
        job = uuid.uuid4().hex[:12]
        self.jobs[job] = {"progress": 0.0, "done": False}
        threading.Thread(target=self._invert, args=(job, item, e), daemon=True).start()
        return {"job": job}

    def _invert(self, job: str, item: Loaded, edit: Edit) -> None:
        state = self.jobs[job]
        try:
            with item.lock:
                run = item.run
                inv = invert(
                    item.gen,
                    edit.feature(),
                    run.f0,
                    run.code,
                    class_index=run.class_index,
                    progress=False,
                    on_progress=lambda p: state.update(progress=p),
                )
            state |= {
                "done": True,
                "progress": 1.0,
                "residual": inv.residual,
                "image_agreement": inv.image_agreement,
                "steps": inv.steps,
                "image": png_data(inv.image, run.value_range),
            }
        except Exception as err:  # reported to the page, never lost in a thread
            state |= {"done": True, "error": str(err)}

    def job(self, job: str) -> dict[str, Any]:
        if job not in self.jobs:
            raise HTTPException(404, f"job: no job {job!r}")
        return self.jobs[job]

    def save(self, req: SaveRequest) -> dict[str, Any]:
        if not NAME.match(req.name):
            raise HTTPException(
                422, f"name: {req.name!r} must be a plain folder name (A-z 0-9 _.-)"
            )
        item, e = self.edit_of(req)
        run = item.run
        with item.lock:
            result = apply(e, item.gen)
            inv = None
            if req.invert:
                inv = invert(item.gen, result.feature, run.f0, run.code, progress=False)
            try:
                out = save_edit(e, result, self.edits / req.name, inversion=inv)
            except FileExistsError as err:
                raise HTTPException(409, f"name: {err}") from None
        return {"folder": str(out)}


def create_app(runs: list[Run], edits: str | Path = "edits", device: str = "cpu") -> FastAPI:
    """The FastAPI app serving ``runs`` (see the module docstring)."""
    state = App(runs, Path(edits), device)
    api = FastAPI(title="regprim serve")

    @api.get("/", response_class=HTMLResponse)
    def page() -> str:
        return template("serve.html")

    @api.get("/static/grid.js")
    def grid_js() -> Response:
        return Response(script("grid.js"), media_type="text/javascript")

    for path, method in (
        ("/api/reconstruct", state.reconstruct),
        ("/api/edit", state.edit),
        ("/api/invert", state.start_inversion),
        ("/api/save", state.save),
    ):
        api.post(path)(method)  # the request schema comes from the method's annotation
    api.get("/api/runs")(state.runs)
    api.get("/api/jobs/{job}")(state.job)
    return api


def serve(runs: list[Run], host: str = "127.0.0.1", port: int = 8765, **kwargs) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(runs, **kwargs), host=host, port=port, log_level="warning")
