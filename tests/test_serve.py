"""`linedraw serve`: the API through Starlette's test client, the loopback server for raw (unnormalised) traversal
URLs and a small concurrent load, and the command's argument checks. Tiny random generator + random timm
embedder, a few synthetic photos (one with a file name that is an HTML tag)."""
from __future__ import annotations

import contextlib
import http.client
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from linedraw.cli import main
from tests.test_retrieval_cli import _build, _photo, data  # noqa: F401  (data is a fixture)

starlette_testclient = pytest.importorskip("starlette.testclient", reason="starlette is not installed (serve extra)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'linedraw[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")

from linedraw.serve.app import bind, create_app, make_server, url_of  # noqa: E402
from linedraw.serve.search import SketchSearch  # noqa: E402

XSS_NAME = '<img src=x onerror="window.__pwned=1">'


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sketch_png(shape: str = "cat", size: int = 96, strokes: int = 1) -> bytes:
    """A black-on-white sketch: a circle (cat) or a square (dog), plus extra lines for `strokes` > 1."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "cat" else draw.rectangle)((16, 16, 70, 70), outline=0, width=3)
    for i in range(1, strokes):
        draw.line((5, 10 * i, size - 5, size - 10 * i), fill=0, width=3)
    return png_bytes(image)


@pytest.fixture(scope="module")
def indexes(data, tmp_path_factory) -> tuple[Path, Path, Path]:  # noqa: F811
    """(index of gallery + a hostile-named photo, index of the dogs only, that gallery folder)."""
    root = tmp_path_factory.mktemp("serve")
    gallery = root / "gallery"
    for path in (data / "gallery").rglob("*.jpg"):
        (gallery / path.parent.name).mkdir(parents=True, exist_ok=True)
        (gallery / path.parent.name / path.name).write_bytes(path.read_bytes())
    _photo(gallery / "cat" / f"{XSS_NAME}.png", "cat", seed=5)
    assert _build(data, root / "index", gallery=str(gallery)) == 0
    assert _build(data, root / "dogs", gallery=str(gallery / "dog")) == 0
    return root / "index", root / "dogs", gallery


@pytest.fixture(scope="module")
def search(indexes):
    engine = SketchSearch([indexes[0], indexes[1]], "cpu", max_upload_bytes=200_000, max_pixels=500 * 500, default_k=5)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(search):
    with starlette_testclient.TestClient(create_app(search), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on a free loopback port in a background thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield url_of(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def server_url(search):
    with running_server(create_app(search, workers=2)) as url:
        yield url


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET `target` sent byte for byte (no client-side `..` or percent normalisation)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ----------------------------------------------------------------------------------------------- the API


def test_page_and_static_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="canvas"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "innerHTML" not in client.get("/static/app.js").text  # names are only ever set as text


def test_indexes_are_listed_in_command_line_order(client, indexes):
    listed = client.get("/api/indexes").json()
    assert [i["name"] for i in listed["indexes"]] == ["index", "dogs"]
    assert [i["count"] for i in listed["indexes"]] == [7, 3] and listed["k"] == 5


def test_sketch_search_ranks_photos_by_id_and_serves_only_those(client, indexes):
    response = client.post("/api/search?index=0&k=4", content=sketch_png(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["query"] == "sketch" and len(result["results"]) == 4
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True)
    hit = result["results"][0]
    assert hit["photo"] == f"/photo/0/{hit['id']}" and hit["thumb"] == f"/thumb/0/{hit['id']}"
    assert hit["path"].startswith(str(indexes[2]))
    thumb = client.get(hit["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    photo = client.get(hit["photo"])
    assert photo.status_code == 200 and photo.content == Path(hit["path"]).read_bytes()
    assert photo.headers["content-type"] in ("image/jpeg", "image/png")


def test_the_second_index_answers_from_its_own_photos(client, indexes):
    result = client.post("/api/search?index=1&k=50", content=sketch_png("dog")).json()
    assert len(result["results"]) == 3
    assert all(Path(hit["path"]).parent.name == "dog" for hit in result["results"])
    assert client.get(f"/photo/1/{result['results'][0]['id']}").status_code == 200
    assert client.post("/api/search?index=2", content=sketch_png()).status_code == 404


def test_a_colour_photo_is_drawn_first_unless_raw(client, data):  # noqa: F811
    photo = (data / "gallery" / "cat" / "cat0.jpg").read_bytes()
    assert client.post("/api/search", content=photo).json()["query"] == "photo"
    assert client.post("/api/search?raw=1", content=photo).json()["query"] == "photo (raw)"


def test_more_strokes_change_the_results(client):
    first = client.post("/api/search?k=7", content=sketch_png(strokes=1)).json()["results"]
    later = client.post("/api/search?k=7", content=sketch_png(strokes=4)).json()["results"]
    assert [(h["id"], h["score"]) for h in first] != [(h["id"], h["score"]) for h in later]


@pytest.mark.parametrize("body, params, status, words", [
    (b"x" * 200_001, "", 413, "too large"),
    (png_bytes(Image.new("L", (600, 600), 255)), "", 413, "pixels"),
    (b"<html>not an image</html>", "", 400, "not a usable image"),
    (b"", "", 400, "empty"),
    (None, "k=0", 400, "k must be between"),
    (None, "k=many", 400, "k must be a whole number"),
    (None, "index=-1", 404, "no index number"),
    (png_bytes(Image.new("RGB", (2, 400), (200, 30, 30))), "", 400, "cannot be drawn"),  # a strip of colour
])
def test_bad_queries_get_a_json_message(client, body, params, status, words):
    response = client.post(f"/api/search?{params}", content=sketch_png() if body is None else body)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_a_declared_oversized_upload_is_refused_before_it_is_read(client):
    response = client.post("/api/search", content=b"x" * 10, headers={"content-length": "999999999"})
    assert response.status_code == 413 and "999999999 bytes" in response.json()["error"]


@pytest.mark.parametrize("url", ["/photo/0/999999", "/thumb/0/999999", "/photo/0/abc", "/photo/0/-1", "/photo/7/0",
                                 "/photo/0", "/static/../search.py", "/nothing", "/photo/0/99999999999999999999",
                                 "/thumb/0/99999999999999999999"])
def test_only_indexed_photos_are_served(client, url):
    response = client.get(url)
    assert response.status_code in (400, 404) and "error" in response.json()


def test_a_wildcard_bind_accepts_this_machines_names_only(search):
    import socket

    from linedraw.serve.app import allowed_hosts

    names = allowed_hosts("0.0.0.0", ["photos.lan", "fd00::7"])
    assert "*" not in names and {"localhost", "127.0.0.1", "[::1]", socket.gethostname()} <= set(names)
    assert {"photos.lan", "[fd00::7]"} <= set(names)
    app = create_app(search, host="0.0.0.0", allowed=["photos.lan"])
    with starlette_testclient.TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/indexes", headers={"host": "evil.example"}).status_code == 400
        assert client.get("/api/indexes", headers={"host": "photos.lan:8000"}).status_code == 200
        assert client.get("/api/indexes", headers={"host": f"{socket.gethostname()}:8000"}).status_code == 200


def test_other_host_names_are_refused(client):
    # a page on another site whose name resolves to 127.0.0.1 (DNS rebinding) must not read the gallery
    assert client.get("/api/indexes", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/indexes", headers={"host": "localhost:8000"}).status_code == 200


# ----------------------------------------------------------------------------------------------- the real server


@pytest.mark.parametrize("target", [
    "/photo/../../etc/passwd", "/photo/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/photo/0/..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2fsearch.py",
    "/thumb/0/1%00", "/photo/0/1.5",
])
def test_traversal_urls_are_refused_by_the_live_server(server_url, target):
    status, body = raw_get(server_url, target)
    assert status in (400, 404), (target, status)
    assert b"root:" not in body and b"import" not in body


def test_a_slow_query_holds_up_neither_the_page_nor_other_queries(server_url, search, monkeypatch):
    encoder = search.encoders[0]
    real_query, entered, release, calls = encoder.query, threading.Event(), threading.Event(), []

    def first_call_waits(image, raw=False):
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(120)
        return real_query(image, raw=raw)

    monkeypatch.setattr(encoder, "query", first_call_waits)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{server_url}/api/search", content=sketch_png(), timeout=120)
        assert entered.wait(60), "the first query never reached the embedder"
        try:  # while it is stuck in embedding, the event loop still answers
            assert httpx.get(f"{server_url}/api/indexes", timeout=60).status_code == 200
            assert httpx.post(f"{server_url}/api/search", content=sketch_png("dog"), timeout=60).status_code == 200
            assert not slow.done()
        finally:
            release.set()
        assert slow.result().status_code == 200


def test_concurrent_searches_all_succeed(server_url, capsys):
    bodies = [sketch_png("cat" if i % 2 else "dog", strokes=1 + i % 3) for i in range(50)]

    def one(body: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        response = httpx.post(f"{server_url}/api/search?k=5", content=body, timeout=120)
        return response.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, bodies))
    latencies = sorted(seconds for _, seconds in outcomes)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    with capsys.disabled():
        print(f"\nserve load: {len(outcomes)} searches from 8 threads: p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms")
    assert [status for status, _ in outcomes] == [200] * 50


# ----------------------------------------------------------------------------------------------- the command


@pytest.mark.parametrize("extra, words", [
    (["--port", "70000"], "--port must be between"),
    (["-k", "0"], "-k must be between"),
    (["--max-upload", "lots"], "--max-upload"),
    (["--workers", "-1"], "--workers must be"),
])
def test_serve_checks_its_arguments_in_one_line(indexes, capsys, extra, words):
    assert main(["serve", str(indexes[0]), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_a_busy_port_is_one_line(indexes, capsys):
    with contextlib.closing(bind("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(indexes[0]), "--port", str(port)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: cannot listen on 127.0.0.1:") and "\n" not in line


def test_a_folder_that_is_not_an_index_is_one_line(indexes, tmp_path, capsys):
    with contextlib.closing(bind("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    (tmp_path / "notes").mkdir()
    assert main(["serve", str(indexes[0]), str(tmp_path / "notes"), "--port", str(port)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and str(tmp_path / "notes") in line and "\n" not in line
    bind("127.0.0.1", port).close()  # the port was given back

