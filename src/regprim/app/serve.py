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
  never a path the request chooses), with the inversion of a finished ``job`` of the same edit.

Guarded as the trusted local servers of this field are (docs/reliability.md, "The local
server"): it binds to 127.0.0.1 unless told otherwise; a request whose ``Host`` is not
127.0.0.1, localhost or the bound host is refused (a page elsewhere cannot reach it by DNS
rebinding); every request but the page's script needs the per-start token, given once in the
URL printed at start (``?token=...``, kept as a same-site cookie) or as ``X-Regprim-Token``
(``--no-token`` opts out); requests are validated by schema with every list and number bounded
(a bad one gets a 4xx JSON error that names the field); a body over ``MAX_BODY`` bytes gets 413
before it is read, one that does not arrive within ``BODY_TIMEOUT`` seconds 408, a connection
whose request headers are not whole within ``HEADER_TIMEOUT`` seconds is closed, and at most
``CONNECTIONS`` are served at once (503 beyond); every answer says ``Referrer-Policy:
no-referrer`` and the page moves the token out of its address (``history.replaceState``) once
the cookie holds it; inversions run one at a time on one
worker thread with at most ``QUEUE`` waiting, and finished jobs beyond ``KEPT`` are dropped; a
lock per generator makes concurrent requests safe.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from regprim.control.edit import Edit, apply, save_edit
from regprim.control.inversion import invert
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator
from regprim.present.assets import script, template
from regprim.present.figures import to_rgb

LISTED = 60  # components listed per run (the largest)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the whole name: fullmatch
MAX_CELLS = 4096  # cells in one request: more than any grid a run can have
MAX_WEIGHTS = 4096  # weighted components in one request
WEIGHT_RANGE = 10.0  # |weight| of a component: 0 drops it, 1 keeps it, 2 doubles it
QUEUE = 4  # inversions waiting behind the running one
KEPT = 32  # finished inversion jobs kept for /api/jobs
COOKIE = "regprim_token"
MAX_BODY = 1 << 20  # bytes of a request body; the largest valid request is ~100 kB
BODY_TIMEOUT = 10.0  # seconds for a request's body to arrive
HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive, from the connection or idle
CONNECTIONS = 64  # connections and requests served at once
Weight = Annotated[float, Field(ge=-WEIGHT_RANGE, le=WEIGHT_RANGE, allow_inf_nan=False)]


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
    cells: list[int] = Field(
        min_length=1, max_length=MAX_CELLS, description="player cells to take from the donor"
    )


class ReconstructRequest(BaseModel):
    run: int = Field(ge=0)
    cells: list[int] = Field(min_length=1, max_length=MAX_CELLS)
    salient_only: bool = True


class EditRequest(BaseModel):
    run: int = Field(ge=0)
    weights: dict[int, Weight] = Field(
        default_factory=dict,
        max_length=MAX_WEIGHTS,
        description=f"weight per component (action set bitmask), finite, in [-{WEIGHT_RANGE}, "
        f"{WEIGHT_RANGE}]",
    )
    transplant: Transplant | None = None


class SaveRequest(EditRequest):
    name: str = Field(description="folder name under the edits folder (letters, digits, _.-)")
    invert: bool = Field(default=False, description="invert the edit to a code and save it")
    job: str | None = Field(
        default=None, max_length=64, description="a finished inversion of this edit to save"
    )


def edit_key(req: EditRequest) -> str:
    """What makes an edit: its run, weights and transplant (an inversion belongs to one)."""
    transplant = req.transplant.model_dump() if req.transplant else None
    return json.dumps([req.run, sorted(req.weights.items()), transplant])


class App:
    """The loaded runs, their generators and the inversion jobs."""

    def __init__(self, runs: list[Run], edits: Path, device: str = "cpu") -> None:
        if edits.exists() and not edits.is_dir():
            msg = f"--edits {edits} is a file; give a folder for the edit folders"
            raise NotADirectoryError(msg)
        self.loaded = [Loaded(run, run.generator(device)) for run in runs]
        self.edits = edits
        self.jobs: dict[str, dict[str, Any]] = {}
        self.inversions: dict[str, tuple[str, Any]] = {}  # job: (edit key, Inversion)
        self.jobs_lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regprim-invert")

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
        with self.jobs_lock:
            waiting = sum(not j["done"] for j in self.jobs.values())
            if waiting > QUEUE:
                msg = f"{waiting} inversions are running or waiting (at most {QUEUE + 1}); retry"
                raise HTTPException(429, f"invert: {msg} when one has finished")
            finished = [k for k, j in self.jobs.items() if j["done"]]
            for old in finished[: max(len(finished) - KEPT + 1, 0)]:  # the oldest first
                del self.jobs[old]
                self.inversions.pop(old, None)
            job = uuid.uuid4().hex[:12]
            self.jobs[job] = {"progress": 0.0, "done": False}
        self.worker.submit(self._invert, job, item, e, edit_key(req))
        return {"job": job}

    def _update(self, job: str, **values: Any) -> None:
        with self.jobs_lock:
            self.jobs[job] |= values

    def _invert(self, job: str, item: Loaded, edit: Edit, key: str) -> None:
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
                    on_progress=lambda p: self._update(job, progress=p),
                )
            with self.jobs_lock:
                self.inversions[job] = (key, inv)
            self._update(
                job,
                done=True,
                progress=1.0,
                residual=inv.residual,
                image_agreement=inv.image_agreement,
                steps=inv.steps,
                image=png_data(inv.image, run.value_range),
            )
        except Exception as err:  # reported to the page, never lost in a thread
            self._update(job, done=True, error=str(err))

    def job(self, job: str) -> dict[str, Any]:
        with self.jobs_lock:  # a copy: the worker updates the live one
            if job not in self.jobs:
                raise HTTPException(404, f"job: no job {job!r} (finished jobs are kept {KEPT})")
            return dict(self.jobs[job])

    def finished_inversion(self, req: SaveRequest) -> Any:
        """The inversion of job ``req.job``, which must have finished and be of this edit."""
        state = self.job(str(req.job))
        if not state["done"]:
            raise HTTPException(409, "job: the inversion is still running; save when it is done")
        if "error" in state:
            raise HTTPException(409, f"job: the inversion failed ({state['error']}); invert again")
        with self.jobs_lock:
            key, inv = self.inversions[str(req.job)]
        if key != edit_key(req):
            msg = "job: that inversion is of another edit (weights or transplant changed since)"
            msg += "; invert again"
            raise HTTPException(409, msg)
        return inv

    def save(self, req: SaveRequest) -> dict[str, Any]:
        if not NAME.fullmatch(req.name):
            raise HTTPException(
                422, f"name: {req.name!r} must be a plain folder name (A-z 0-9 _.-)"
            )
        item, e = self.edit_of(req)
        run = item.run
        inv = self.finished_inversion(req) if req.job is not None else None
        with item.lock:
            result = apply(e, item.gen)
            if req.invert and inv is None:
                inv = invert(
                    item.gen,
                    result.feature,
                    run.f0,
                    run.code,
                    class_index=run.class_index,
                    progress=False,
                )
            try:
                out = save_edit(e, result, self.edits / req.name, inversion=inv)
            except FileExistsError:
                msg = f"name: an edit named {req.name!r} exists already; choose another name"
                raise HTTPException(409, msg) from None
        return {"folder": str(out), "inversion": inv is not None}


def create_app(
    runs: list[Run],
    edits: str | Path = "edits",
    device: str = "cpu",
    token: str | None = None,
    hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The FastAPI app serving ``runs`` (see the module docstring). ``token``: the secret every
    request must carry (None: no token); ``hosts``: allowed ``Host`` names besides 127.0.0.1
    and localhost (the bound host)."""
    state = App(runs, Path(edits), device)
    api = FastAPI(title="regprim serve")
    if token is not None:
        api.middleware("http")(token_guard(token))
    api.add_middleware(Limits)  # before the token guard reads anything
    allowed = sorted({"127.0.0.1", "localhost", "[::1]", *hosts})
    api.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed)  # checked first

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        """A 422 naming the field, without echoing the input (NaN is not JSON)."""
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

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


def token_guard(token: str) -> Callable:
    """Middleware: the page's script is public; everything else needs ``token``, from the
    URL's ``?token=`` (then kept as a same-site, HTTP-only cookie), the cookie or the
    ``X-Regprim-Token`` header."""

    async def guard(request: Request, call_next: Callable) -> Response:
        given = (
            request.query_params.get("token")
            or request.headers.get("x-regprim-token")
            or request.cookies.get(COOKIE)
        )
        if request.url.path != "/static/grid.js" and not (
            given and secrets.compare_digest(given, token)
        ):
            detail = (
                "missing or wrong token: open the URL `regprim serve` printed (it ends in "
                "?token=...), or start it with --no-token"
            )
            return JSONResponse({"detail": detail}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    return guard


class Limits:
    """ASGI middleware: a body over ``MAX_BODY`` bytes gets 413 (by its ``Content-Length``
    before anything is read; a body sent without one is counted as it arrives and not kept
    past the limit), a body that is not whole within ``BODY_TIMEOUT`` seconds 408; the app
    gets the body whole. Every answer says ``Referrer-Policy: no-referrer``."""

    HEADERS = [(b"referrer-policy", b"no-referrer")]

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await self.refuse(send, 413, f"a body of {length.decode(errors='replace')} bytes")
            return
        body, seen, more = b"", 0, True
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while more:  # past the limit, read to the end unkept: the answer then arrives
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    seen += len(message.get("body", b""))
                    body = body + message.get("body", b"") if seen <= MAX_BODY else b""
                    more = message.get("more_body", False)
        except TimeoutError:
            await self.refuse(send, 408, f"the request's body ({seen} bytes so far)")
            return
        if seen > MAX_BODY:
            await self.refuse(send, 413, f"a body of {seen} bytes")
            return
        whole = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return whole.pop() if whole else await receive()

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, replay, sending)

    @classmethod
    async def refuse(cls, send: Callable, status: int, what: str) -> None:
        detail = (
            f"{what} is over the limit of {MAX_BODY} bytes"
            if status == 413
            else f"{what} did not arrive whole within {BODY_TIMEOUT:g} s"
        )
        body = JSONResponse({"detail": detail}).body
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        start = {"type": "http.response.start", "status": status, "headers": headers + cls.HEADERS}
        await send(start)
        await send({"type": "http.response.body", "body": body})


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8765) -> Any:
    """uvicorn's settings for ``app``: request headers due within ``HEADER_TIMEOUT`` seconds of
    the connection or of the last answer (:func:`deadlines`), ``CONNECTIONS`` at once."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=deadlines(),
        limit_concurrency=CONNECTIONS,
        timeout_keep_alive=5,
    )


def deadlines() -> type:
    """uvicorn's h11 protocol with a deadline for request headers: a connection that holds
    none or half of them ``HEADER_TIMEOUT`` seconds after it opened or after its last answer,
    with no request being answered, is closed."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Deadlines(H11Protocol):
        due: asyncio.TimerHandle | None = None

        def arm(self) -> None:
            if self.due is not None:
                self.due.cancel()
            self.due = self.loop.call_later(HEADER_TIMEOUT, self.late)

        def late(self) -> None:
            answering = self.cycle is not None and not self.cycle.response_complete
            if not answering and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.due is not None:
                self.due.cancel()
            super().connection_lost(exc)

    return Deadlines


def serve(
    runs: list[Run], host: str = "127.0.0.1", port: int = 8765, token: str | None = None, **kwargs
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(runs, token=token, hosts=(host,), **kwargs)
    uvicorn.Server(server_config(app, host, port)).run()
