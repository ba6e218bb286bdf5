"""`regprim serve`: the JSON API's error paths with an HTTP client, and the page driven in
headless chromium (toggle a primitive, reconstruct three cells of an n = 36 run, a 4xx)."""

import base64
import io
import socket
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_report import CHROMIUM, needs_browser

import regprim.app.serve as serving
from regprim import ExplainConfig, explain, load_run
from regprim.app.serve import KEPT, QUEUE, create_app, server_config
from regprim.storage.run_folder import load_edit


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The planted generator on its whole 6x6 grid (n = 36, a compact run)."""
    out = tmp_path_factory.mktemp("grid") / "run"
    cfg = ExplainConfig(model="planted", players="all", baseline_count=200)
    explain(cfg, out=out, progress=False, verify=False)
    return load_run(out)


@pytest.fixture(scope="module")
def runs(planted_run, planted_donor, grid_run):
    return [planted_run, planted_donor, grid_run]


TOKEN = "test-token"


def connect(app, token: str | None = TOKEN) -> TestClient:
    """An HTTP client as the page is one: on 127.0.0.1, with the token."""
    headers = {"X-Regprim-Token": token} if token else {}
    return TestClient(app, base_url="http://127.0.0.1:8765", headers=headers)


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
    return tmp_path_factory.mktemp("edits")


@pytest.fixture(scope="module")
def app(runs, edits):
    return create_app(runs, edits=edits, token=TOKEN)


@pytest.fixture(scope="module")
def client(app):
    return connect(app)


def decode(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)


def test_runs_are_listed_with_their_components(client, planted_run):
    listed = client.get("/api/runs").json()
    assert [r["n"] for r in listed] == [9, 9, 36]
    top = listed[0]["components"][0]
    assert top["mask"] == planted_run.ranked[0] and top["norm"] == planted_run.norm(top["mask"])


def test_bad_requests_get_a_4xx_naming_the_field(client):
    r = client.post("/api/reconstruct", json={"run": 7, "cells": [14]})
    assert r.status_code == 404 and r.json()["detail"].startswith("run:")
    r = client.post("/api/reconstruct", json={"run": 0, "cells": [0]})
    assert r.status_code == 422 and r.json()["detail"].startswith("cells:")
    r = client.post("/api/reconstruct", json={"run": 0, "cells": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "cells"
    r = client.post("/api/edit", json={"run": 0, "weights": {"abc": 1}})
    assert r.status_code == 422 and "weights" in r.json()["detail"][0]["loc"]
    r = client.post("/api/edit", json={"run": 0, "weights": {"3": 0}})  # 3 is not a component
    assert r.status_code == 422 and "no non-zero component" in r.json()["detail"]
    r = client.post("/api/edit", json={"run": 0, "transplant": {"donor": 2, "cells": [14]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("transplant:")
    assert "players" in r.json()["detail"]
    r = client.post("/api/edit", json={"run": 0, "transplant": {"donor": 1, "cells": [0]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("transplant: cells [0]")
    r = client.post("/api/save", json={"run": 0, "name": "../outside"})
    assert r.status_code == 422 and r.json()["detail"].startswith("name:")
    assert client.get("/api/jobs/nope").status_code == 404


def test_edit_invert_and_save_through_the_api(client, planted_run):
    mask = planted_run.ranked[0]
    r = client.post("/api/edit", json={"run": 0, "weights": {str(mask): 0}}).json()
    assert r["cells"] == sorted(planted_run.cells(mask)) and r["metrics"]["locality"] < 1e-5
    job = client.post("/api/invert", json={"run": 0, "weights": {str(mask): 0}}).json()["job"]
    for _ in range(200):
        status = client.get(f"/api/jobs/{job}").json()
        if status["done"]:
            break
        time.sleep(0.1)
    assert status["done"] and "error" not in status and status["residual"] < 0.05
    saved = client.post("/api/save", json={"run": 0, "weights": {str(mask): 0}, "name": "e1"})
    assert saved.status_code == 200 and saved.json()["folder"].endswith("e1")
    again = client.post("/api/save", json={"run": 0, "weights": {str(mask): 0}, "name": "e1"})
    assert again.status_code == 409 and "choose another name" in again.json()["detail"]
    assert "--overwrite" not in again.json()["detail"]  # no CLI hint in a web page
    record, tensors = load_edit(saved.json()["folder"])  # the request's edit, checked
    (op,) = record["operations"]
    assert (op["kind"], op["masks"], op["factor"]) == ("scale", [mask], 0.0)
    want = planted_run.f + (0 - 1) * planted_run.component([mask])[0]
    assert torch.allclose(tensors["f_edit"], want, atol=1e-6)
    assert "inversion" not in record
    # the finished inversion saved with its edit, and only with its own edit
    body = {"run": 0, "weights": {str(mask): 0}, "job": job}
    kept = client.post("/api/save", json=body | {"name": "e2"})
    assert kept.status_code == 200 and kept.json()["inversion"]
    record, tensors = load_edit(kept.json()["folder"])
    assert record["inversion"]["residual"] == status["residual"] and "code" in tensors
    other = client.post("/api/save", json=body | {"name": "e3", "weights": {str(mask): 0.5}})
    assert other.status_code == 409 and "another edit" in other.json()["detail"]


def test_concurrent_requests_get_their_own_answers(client, planted_run):
    masks = planted_run.ranked[:4]
    answers = {}

    def ask(mask):
        r = client.post("/api/edit", json={"run": 0, "weights": {str(mask): 0}})
        answers[mask] = r.json()["cells"]

    threads = [threading.Thread(target=ask, args=(m,)) for m in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {m: sorted(planted_run.cells(m)) for m in masks}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(runs, edits=tmp_path_factory.mktemp("served-edits"), token=TOKEN)
    srv = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/?token={TOKEN}"
    srv.should_exit = True
    thread.join(10)


@needs_browser
def test_the_live_page_in_headless_chromium(server, planted_run, planted_donor, grid_run):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors, failed = [], []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(server)
        page.wait_for_selector("#components input[type=checkbox]")
        assert "token" not in page.url  # out of the address bar and the history, kept as cookie
        # on load: no broken image (result and difference wait, saying what will appear there)
        assert page.evaluate(
            "[...document.images].filter((i) => !i.hidden).every((i) => i.naturalWidth > 0)"
        )
        assert not page.is_visible("#result") and page.is_visible("#result-empty")
        # the donor is shown; the slider values are written beside the sliders
        assert page.get_attribute("#donor-image", "src") == page.evaluate("runs[1].image")
        assert page.text_content("#components output") == "x1.0"
        # the report's grid (static/grid.js): cells at the grid's own edges, only players live
        tops = page.evaluate(
            "[...document.querySelectorAll('#grid .cell')].map((e) => parseFloat(e.style.top))"
        )
        rows, cols = planted_run.grid.rows, planted_run.grid.cols
        scale = 256 / planted_run.image.shape[1]
        edges = planted_run.grid.row_edges()
        assert tops == [
            pytest.approx(edges[i // cols] * scale, abs=0.01) for i in range(rows * cols)
        ]
        # a click on a cell that is no player: nothing chosen, and the page says why
        other = next(c for c in range(rows * cols) if c not in planted_run.players)
        page.click(f"#grid .cell[data-cell='{other}']")
        assert page.get_attribute(f"#grid .cell[data-cell='{other}']", "class") == "cell"
        assert f"cell {other} is not a player" in page.inner_text("#message")
        # an empty selection: said in the page, no request sent
        page.click("#reconstruct")
        assert "choose at least one player cell" in page.inner_text("#message")
        # a player cell, labelled by its grid id; the components that meet it marked
        player = planted_run.players[0]
        assert page.text_content(f"#grid .cell[data-cell='{player}']") == str(player)
        page.click(f"#grid .cell[data-cell='{player}']")
        assert "on" in page.get_attribute(f"#grid .cell[data-cell='{player}']", "class")
        assert page.inner_text("#message") == ""
        marked = page.evaluate(
            "[...document.querySelectorAll('#components label.meets input[type=checkbox]')]"
            ".map((e) => +e.dataset.mask)"
        )
        listed = planted_run.table.top_k(serving.LISTED)
        assert marked == [m for m in listed if player in planted_run.cells(m)] and marked
        page.click("#clear")
        # toggle the largest primitive off: the image changes only in its cells
        mask = planted_run.ranked[0]
        page.uncheck(f"#components input[type=checkbox][data-mask='{mask}']")
        page.wait_for_function("document.getElementById('result').src.startsWith('data:')")
        edited = decode(page.get_attribute("#result", "src"))
        target = decode(page.get_attribute("#target", "src"))
        change = np.abs(edited - target).sum(-1)
        inside = planted_run.grid.cell_masks()[planted_run.cells(mask)].any(0).numpy()
        assert change[inside].sum() > 100 and change[~inside].max() <= 1  # 8-bit rounding
        assert "locality" in page.inner_text("#metrics")
        assert not page.is_visible("#result-empty") and not page.is_visible("#difference-empty")
        # save during an inversion: said, and the edit is saved with its inversion once done
        page.click("#invert")
        page.fill("#name", "during")
        page.click("#save")
        assert "inver" in page.inner_text("#status")  # "... once the inversion has finished"
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('saved')", timeout=60000
        )
        assert "with its inversion" in page.inner_text("#status")
        folder = page.inner_text("#status").split()[1]
        record, tensors = load_edit(folder)
        assert record["inversion"]["residual"] < 0.05 and "code" in tensors
        # the same name again: 409, and the status says it was not saved
        page.click("#save")
        page.wait_for_function("document.getElementById('message').textContent.includes('409')")
        assert page.inner_text("#status").startswith("not saved")
        # three cells of the n = 36 run, reconstructed live
        page.select_option("#run", "2")
        for cell in (14, 15, 21):
            page.click(f"#grid .cell[data-cell='{cell}']")
        page.click("#reconstruct")
        page.wait_for_function("document.getElementById('metrics').textContent.includes('meet')")
        assert "14,15,21" in page.inner_text("#result-title")
        image, _ = grid_run.reconstruct([14, 15, 21], grid_run.generator())
        want = np.asarray(
            Image.fromarray(
                ((image - grid_run.value_range[0]) / np.ptp(grid_run.value_range))
                .clamp(0, 1)
                .mul(255)
                .round()
                .to(torch.uint8)
                .permute(1, 2, 0)
                .numpy()
            ).convert("RGB")
        ).astype(float)
        got = decode(page.get_attribute("#result", "src"))
        assert np.abs(got - want).max() <= 1
        # a transplant shows the donor's cells
        page.select_option("#run", "0")
        page.click(f"#grid .cell[data-cell='{player}']")
        page.click("#transplant")
        page.wait_for_function("document.getElementById('result-title').textContent === 'edited'")
        assert f"transplanted cells: {player}" in page.inner_text("#donor-note")
        assert "on" in page.get_attribute(f"#donor-grid .cell[data-cell='{player}']", "class")
        assert len(failed) == 1 and failed[0].endswith("/api/save")  # the 409, and only it
        assert [e for e in errors if "409 (Conflict)" not in e] == []
        browser.close()


# -- what a hostile page or client may try (docs/reliability.md, "The local server") -------------
def test_a_foreign_host_is_refused_and_the_server_goes_on(app):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host."""
    evil = TestClient(app, base_url="http://evil.example", headers={"X-Regprim-Token": TOKEN})
    r = evil.get("/api/runs")
    assert r.status_code == 400 and "images" not in r.text
    assert evil.post("/api/edit", json={"run": 0}).status_code == 400
    assert connect(app).get("/api/runs").status_code == 200
    local = TestClient(app, base_url="http://localhost:8765", headers={"X-Regprim-Token": TOKEN})
    assert local.get("/api/runs").status_code == 200


def test_requests_without_the_token_are_refused(app):
    anonymous = connect(app, token=None)
    for path in ("/", "/api/runs", "/api/jobs/x"):
        r = anonymous.get(path)
        assert r.status_code == 403 and "token" in r.json()["detail"], path
    assert anonymous.post("/api/edit", json={"run": 0}).status_code == 403
    assert connect(app, token="wrong").get("/api/runs").status_code == 403
    assert anonymous.get("/static/grid.js").status_code == 200  # the script holds no data
    page = anonymous.get(f"/?token={TOKEN}")  # the URL printed at start
    assert page.status_code == 200 and "regprim serve" in page.text
    assert anonymous.get("/api/runs").status_code == 200  # the cookie it set


def test_a_cross_site_text_plain_post_is_refused(client):
    """A form on another site can post text/plain without a preflight: not JSON, refused."""
    body = '{"run": 0, "weights": {}}'
    r = client.post("/api/edit", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity", "1e300", "11"])
def test_weights_must_be_finite_and_in_range(client, planted_run, weight):
    mask = planted_run.ranked[0]
    body = f'{{"run": 0, "weights": {{"{mask}": {weight}}}}}'
    for path in ("/api/edit", "/api/save"):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "weights" in r.json()["detail"][0]["loc"], (path, weight)


def test_every_list_is_bounded_and_answered_at_once(client, planted_run):
    start = time.perf_counter()
    cells = [planted_run.players[0]] * 10**5
    r = client.post("/api/reconstruct", json={"run": 0, "cells": cells})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "cells"
    r = client.post("/api/edit", json={"run": 0, "transplant": {"donor": 1, "cells": cells}})
    assert r.status_code == 422
    weights = {str(k): 1.0 for k in range(1, 5000)}
    assert client.post("/api/edit", json={"run": 0, "weights": weights}).status_code == 422
    repeated = [planted_run.players[0]] * 100  # within the bound, named twice: said so
    r = client.post("/api/reconstruct", json={"run": 0, "cells": repeated})
    assert r.status_code == 422 and "repeated" in r.json()["detail"]
    assert time.perf_counter() - start < 5


def test_names_are_whole_plain_names_and_indices_are_bounded(client, runs):
    for name in ("abc\n", "a/b", "..", ""):
        r = client.post("/api/save", json={"run": 0, "name": name})
        assert r.status_code == 422, name
    r = client.post("/api/reconstruct", json={"run": len(runs), "cells": [14]})
    assert r.status_code == 404  # one past the last run: not a 500


def test_fifty_concurrent_inversions_are_bounded(runs, tmp_path, monkeypatch):
    """One inversion runs at a time and QUEUE wait; the rest get a 429 at once, the thread
    count stays bounded, the server still answers while they run, and finished jobs are
    pruned. (The inversions here wait on an event, so the queue is full when they arrive.)"""
    import regprim.app.serve as serve

    release = threading.Event()
    real = serve.invert

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "invert", slow)
    app = create_app(runs, edits=tmp_path, token=TOKEN)
    client = connect(app)
    threads_before = threading.active_count()
    answers = [client.post("/api/invert", json={"run": 0}) for _ in range(50)]
    codes = [r.status_code for r in answers]
    assert codes.count(200) == QUEUE + 1 and codes.count(429) == 50 - QUEUE - 1
    assert "retry" in answers[-1].json()["detail"]
    assert threading.active_count() <= threads_before + 2
    r = client.post("/api/edit", json={"run": 2, "weights": {}})
    assert r.status_code == 200  # another run's edit is not stuck behind the queue
    jobs = [r.json()["job"] for r in answers if r.status_code == 200]
    assert client.get(f"/api/jobs/{jobs[0]}").json() == {"progress": 0.0, "done": False}
    release.set()
    for _ in range(300):
        if all(client.get(f"/api/jobs/{j}").json()["done"] for j in jobs):
            break
        time.sleep(0.1)
    assert all(client.get(f"/api/jobs/{j}").json()["residual"] < 0.05 for j in jobs)
    more = []
    for _ in range(KEPT + 2):
        r = client.post("/api/invert", json={"run": 0})
        while r.status_code == 429:  # the queue is bounded: wait for room
            time.sleep(0.05)
            r = client.post("/api/invert", json={"run": 0})
        more.append(r.json()["job"])
    assert client.get(f"/api/jobs/{jobs[0]}").status_code == 404  # pruned, the oldest first
    assert client.get(f"/api/jobs/{more[-1]}").status_code == 200


# -- a client that sends too much, too slowly, or never finishes ---------------------------------
def raw(server: str, request: bytes, wait: float = 5.0) -> bytes:
    """Send ``request`` to the live server as bytes; what comes back before it closes."""
    host, port = server.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def post(path: str, length: str, body: bytes, chunked: bool = False) -> bytes:
    size = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Regprim-Token: {TOKEN}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
    ).encode()
    return head + size + b"\r\n\r\n" + body


def test_a_body_over_the_limit_gets_413_before_it_is_read(server):
    start = time.perf_counter()
    answer = raw(server, post("/api/reconstruct", str(10 * 2**20), b'{"run": 0, "cells": ['))
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 1048576 bytes" in answer
    assert time.perf_counter() - start < 2  # the 10 MB were never waited for
    assert b"referrer-policy: no-referrer" in answer.lower()
    chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"  # no length given: counted as it arrives
    answer = raw(server, post("/api/reconstruct", "", chunk * 40 + b"0\r\n\r\n", chunked=True))
    assert answer.startswith(b"HTTP/1.1 413")
    answer = raw(server, post("/api/reconstruct", "-5", b"{}"))
    assert answer.startswith(b"HTTP/1.1 4")  # a length that is no number is not read either


def test_slow_headers_and_bodies_are_cut_off(server, monkeypatch):
    monkeypatch.setattr(serving, "HEADER_TIMEOUT", 0.5)
    monkeypatch.setattr(serving, "BODY_TIMEOUT", 0.5)
    start = time.perf_counter()
    assert raw(server, b"GET /api/runs HTTP/1.1\r\nHost: 127") == b""  # closed, unanswered
    assert 0.4 < time.perf_counter() - start < 3
    answer = raw(server, post("/api/reconstruct", "100", b'{"run": 0'))  # 9 of 100 bytes
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive whole within" in answer
    # a whole request is still answered, and on time
    answer = raw(
        server,
        b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Regprim-Token: "
        + TOKEN.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200") and b"no-referrer" in answer.lower()
