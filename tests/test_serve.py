"""`gapdiff serve`: one API test suite run against a real uvicorn process and a Ray Serve deployment on loopback
(protect, batch, limits, errors, metrics, batched = single), plus SIGTERM and in-process checks of the batcher,
timeouts and readiness."""
import asyncio
import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from gapdiff_core import Protector  # noqa: E402
from gapdiff_core.serving.batcher import Batcher, QueueFull  # noqa: E402

API_KEY = "test-key-123"
MAX_BODY = 3 * 2 ** 20
# The server's settings come from all three sources: flags, GAPDIFF_SERVE_* variables and a YAML file. The suite's
# limits (queue 4, body 2 MiB, 4 MP) only hold if each source was read, and the YAML's max_queue: 99 and
# max_wait_ms: 5 only lose if the environment and the flags win over the file.
SERVER_OPTIONS = ["--precision", "fp32", "--max-batch", "4", "--max-wait-ms", "300", "--api-key-env",
                  "GAPDIFF_TEST_KEY"]
SERVER_ENV = {"GAPDIFF_SERVE_MAX_QUEUE": "4", "GAPDIFF_SERVE_MAX_PIXELS": "4000000"}
SERVER_YAML = "max_queue: 99\nmax_wait_ms: 5\nmax_body_mb: 2\nmax_pixels: 1000\n"


@pytest.fixture(scope="module")
def generator_path(saturated_generator_file):
    return saturated_generator_file


def photo(h=64, w=96, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gapdiff serve` in a child process on 127.0.0.1, ready when /readyz answers 200."""

    def __init__(self, generator, extra, tmpdir, ready_timeout, config_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GAPDIFF_TEST_KEY": API_KEY, **SERVER_ENV, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
        config = Path(config_dir) / "serve.yaml"
        config.write_text(SERVER_YAML)
        self.proc = subprocess.Popen([sys.executable, "-m", "gapdiff_core.cli", "serve", "-g", str(generator),
                                      "--port", str(self.port), "--config", str(config), *SERVER_OPTIONS, *extra],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gapdiff serve exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gapdiff serve not ready within {ready_timeout} s")

    def client(self, key=API_KEY) -> "httpx.Client":
        return httpx.Client(base_url=self.url, timeout=60, headers={"X-API-Key": key} if key else {})

    def stop(self, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module", params=["uvicorn", pytest.param("ray", marks=pytest.mark.ray)])
def server(request, generator_path, tmp_path_factory):
    if request.param == "ray":
        pytest.importorskip("ray.serve")
        extra, ready = ["--ray", "--replicas", "1", "--num-cpus", "1"], 300
    else:
        extra, ready = [], 60
    tmpdir = None if request.param == "ray" else tmp_path_factory.mktemp("tmp")  # Ray keeps its sessions there
    s = Server(generator_path, extra, tmpdir, ready, tmp_path_factory.mktemp("config"))
    s.kind, s.tmpdir = request.param, tmpdir
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def offline(generator_path):
    return Protector(str(generator_path), precision="fp32")


def post(client, rgb, **params):
    return client.post("/v1/protect", content=png(rgb), params=params, headers={"Content-Type": "image/png"})


# ------------------------------------------------------------------ the API suite (uvicorn and Ray Serve)

def test_health_readiness_and_openapi(server):
    with server.client(key=None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["demo"] is True and ready["budget"] == 8
        spec = c.get("/openapi.json").json()
        body = spec["paths"]["/v1/protect"]["post"]["requestBody"]["content"]
        assert {"image/*", "multipart/form-data"} <= set(body)
        assert "/v1/protect/batch" in spec["paths"]
        assert c.get("/docs").status_code == 200


def test_protect_raw_body_returns_the_protected_png_with_its_stats(server, offline):
    rgb = photo(seed=1)
    with server.client() as c:
        r = post(c, rgb)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    change = np.abs(out.astype(int) - rgb.astype(int))
    assert out.shape == rgb.shape and change.max() <= 8 and change.mean() > 0.5
    assert float(r.headers["x-gapdiff-max-change"]) == change.max()
    mse = (change.astype(float) ** 2).mean()
    assert float(r.headers["x-gapdiff-psnr"]) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=0.01)
    assert r.headers["x-gapdiff-demo"] == "true"
    expected = offline.protect_uint8(rgb)  # what `gapdiff protect` computes, within 1 grey level across processes
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert (out == expected).mean() > 0.99


def test_multipart_fields_set_budget_mode_and_format(server, generator_path):
    rgb = photo(seed=2)
    with server.client() as c:
        r = c.post("/v1/protect", files={"image": ("face.png", png(rgb), "image/png")},
                   data={"budget": "4", "format": "webp", "mode": "native"})
        jpg = post(c, rgb, format="jpg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["x-gapdiff-budget"] == "4" and r.headers["x-gapdiff-mode"] == "native"
    out = decode(r.content)  # lossless WebP keeps the bound
    assert 0 < np.abs(out.astype(int) - rgb.astype(int)).max() <= 4
    expected = Protector(str(generator_path), precision="fp32", budget=4, mode="native").protect_uint8(rgb)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1 and (out == expected).mean() > 0.99
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg" and jpg.content[:2] == b"\xff\xd8"


def test_batch_form_goes_on_past_a_bad_file(server):
    files = [("images", ("a.png", png(photo(seed=3)), "image/png")),
             ("images", ("notes.txt", b"not an image at all", "text/plain")),
             ("images", ("b.png", png(photo(80, 80, seed=4)), "image/png"))]
    with server.client() as c:
        r = c.post("/v1/protect/batch", files=files, data={"budget": "6"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["protected"], body["failed"]) == (2, 1)
    a, bad, b = body["results"]
    assert bad["ok"] is False and bad["name"] == "notes.txt" and bad["error"]["kind"] == "bad_image"
    assert "notes.txt" in bad["error"]["message"] and "text file" in bad["error"]["message"]
    for result, seed, shape in ((a, 3, (64, 96)), (b, 4, (80, 80))):
        out = decode(base64.b64decode(result["image_base64"]))
        original = photo(*shape, seed=seed)
        assert result["ok"] and result["budget"] == 6
        assert 0 < np.abs(out.astype(int) - original.astype(int)).max() == result["max_change"] <= 6


def test_error_kind_comes_from_the_failure_not_from_the_file_name(server):
    """413 too_many_pixels only for an image over the pixel limit: a text upload whose name says "decompression
    bomb" is a bad image (the service reads ImageError.kind instead of searching the message)."""
    files = [("images", ("decompression bomb.png", b"not an image at all", "image/png")),
             ("images", ("big.png", png_header_only(3000, 3000), "image/png"))]
    with server.client() as c:
        r = c.post("/v1/protect/batch", files=files)
    named, big = r.json()["results"]
    assert (named["status"], named["error"]["kind"]) == (422, "bad_image"), named
    assert (big["status"], big["error"]["kind"]) == (413, "too_many_pixels"), big


def test_batched_results_are_identical_to_single_ones(server):
    images = [photo(seed=10 + i) for i in range(4)]
    with server.client() as c:
        singles = [decode(post(c, rgb).content) for rgb in images]
        for attempt in range(3):  # the 4 requests must arrive within max_wait (300 ms) to share a batch
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(lambda rgb: post(c, rgb), images))
            sizes = [int(r.headers["x-gapdiff-batch-size"]) for r in responses]
            if max(sizes) > 1:
                break
    assert all(r.status_code == 200 for r in responses)
    assert max(sizes) > 1, f"no batching happened in 3 tries: batch sizes {sizes}"
    for single, r in zip(singles, responses):
        np.testing.assert_array_equal(decode(r.content), single)


def test_limits_body_size_and_pixel_count(server):
    with server.client() as c:
        big = c.post("/v1/protect", content=os.urandom(MAX_BODY), headers={"Content-Type": "image/png"})
        over = c.post("/v1/protect", content=png_header_only(3000, 3000), headers={"Content-Type": "image/png"})
        bomb = c.post("/v1/protect", content=png_header_only(30000, 30000), headers={"Content-Type": "image/png"})
        thin = post(c, photo(40, 2100))  # 512 x 26880 at the working resolution: refused before it is queued
    assert big.status_code == 413 and big.json()["error"]["kind"] == "body_too_large"
    assert over.status_code == 413 and over.json()["error"]["kind"] == "too_many_pixels"
    assert "3000x3000" in over.json()["error"]["message"] and "4,000,000 pixel limit" in over.json()["error"]["message"]
    assert bomb.status_code == 413 and bomb.json()["error"]["kind"] == "too_many_pixels"
    assert thin.status_code == 422 and "aspect ratio is too extreme" in thin.json()["error"]["message"]


def png_header_only(width, height, bit_depth=8, rows=b"\x00" * 64) -> bytes:
    """An RGB PNG whose header declares width x height (a decompression bomb as far as the header says), with
    `rows` (filter byte + samples per row) as its data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("params, kind, words", [
    ({"budget": "abc"}, "bad_parameter", "budget"),
    ({"budget": "0.5"}, "bad_parameter", "budget must be 1-255 grey levels"),  # common.budget's one rule
    ({"budget": "nan"}, "bad_parameter", "budget must be 1-255 grey levels"),
    ({"budget": "9"}, "bad_parameter", "budget must be at most 8 grey levels (the service's budget"),
    ({"mode": "fast"}, "bad_parameter", "mode must be one of working, native"),
    ({"format": "gif"}, "bad_parameter", "format must be one of png, webp, jpg"),
])
def test_bad_parameters_get_json_errors_naming_them(server, params, kind, words):
    with server.client() as c:
        r = post(c, photo(seed=5), **params)
    assert r.status_code == 422
    assert r.json()["error"]["kind"] == kind and words in r.json()["error"]["message"]


def test_bad_input_and_auth_errors_are_json(server):
    with server.client() as c:
        text = c.post("/v1/protect", content=b"hello, not a photo")
        empty = c.post("/v1/protect", content=b"")
        truncated = c.post("/v1/protect", content=png(photo(seed=6))[:400])
        missing = c.get("/v1/nothing")
    with server.client(key=None) as anonymous, server.client(key="wrong") as wrong:
        no_key, bad_key = post(anonymous, photo()), post(wrong, photo())
    assert text.status_code == 422 and "text file" in text.json()["error"]["message"]
    assert empty.status_code == 422 and "empty" in empty.json()["error"]["message"]
    assert truncated.status_code == 422 and truncated.json()["error"]["kind"] == "bad_image"
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found"
    for r in (no_key, bad_key):
        assert r.status_code == 401 and r.json()["error"]["kind"] == "unauthorized"


def test_a_full_queue_answers_429_with_retry_after(server):
    # 8 requests of 8 different sizes: none can share a batch, the first waits max_wait (300 ms) for mates,
    # and the queue holds 4, so some of the others are refused.
    sizes = [(64 + 8 * i, 64) for i in range(8)]
    with server.client() as c:
        for attempt in range(3):
            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda hw: post(c, photo(*hw)), sizes))
            codes = [r.status_code for r in responses]
            if 429 in codes:
                break
    assert 429 in codes, f"no request was refused in 3 tries: {codes}"
    assert set(codes) <= {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["kind"] == "queue_full" and int(r.headers["retry-after"]) >= 1


def test_metrics_count_requests_batches_queue_and_errors(server):
    with server.client() as c:
        post(c, photo(seed=7))
        c.post("/v1/protect", content=b"hello")
        text = c.get("/metrics").text
    assert 'gapdiff_requests_total{endpoint="/v1/protect",status="200"}' in text
    assert 'gapdiff_errors_total{kind="bad_image"}' in text
    assert "gapdiff_request_seconds_bucket" in text and "gapdiff_batch_size_bucket" in text
    assert "gapdiff_queue_depth 0.0" in text
    count = [line for line in text.splitlines() if line.startswith("gapdiff_batch_size_count")]
    assert float(count[0].split()[-1]) >= 1


def test_nothing_is_written_to_the_temp_folder(server):
    with server.client() as c:  # a multipart upload over 1 MiB: frameworks spool those to a temp file
        big = np.random.default_rng(8).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        r = c.post("/v1/protect", files={"image": ("big.png", png(big), "image/png")})
    assert r.status_code == 200 and len(png(big)) > 2 ** 20
    if server.tmpdir is None:
        pytest.skip("Ray's own session files live in the temp folder; the same app is checked on uvicorn")
    assert list(server.tmpdir.rglob("*")) == []


# ------------------------------------------------------------------ graceful shutdown (a process of its own)

def test_sigterm_finishes_in_flight_requests_then_exits(generator_path, tmp_path):
    s = Server(generator_path, ["--max-wait-ms", "1500"], tmp_path, 60, tmp_path)  # a request waits 1.5 s for mates
    try:
        with ThreadPoolExecutor(1) as pool, s.client() as c:
            in_flight = pool.submit(post, c, photo(seed=9))
            deadline = time.monotonic() + 10
            while "gapdiff_queue_depth 1.0" not in c.get("/metrics").text:  # the request is queued
                assert time.monotonic() < deadline
            s.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            refused = False
            while not refused and time.monotonic() < deadline:  # new connections are refused at once
                try:
                    httpx.get(s.url + "/healthz", timeout=1)
                except httpx.TransportError:
                    refused = True
            assert refused and not in_flight.done()
            r = in_flight.result(timeout=30)
        assert r.status_code == 200 and decode(r.content).shape == (64, 96, 3)
        assert s.proc.wait(30) == 0
    finally:
        s.stop()


# ------------------------------------------------------------------ in process: batcher, timeout, readiness

def test_batcher_groups_equal_keys_up_to_max_batch_and_fails_a_batch_together():
    calls = []

    def run(key, payloads):
        calls.append((key, list(payloads)))
        if key == "bad":
            raise ValueError("broken batch")
        return [p * 10 for p in payloads]

    async def main():
        b = Batcher(run, max_batch=2, max_wait_ms=50, max_queue=5)
        b.start()
        futures = [b.submit(k, p) for k, p in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("bad", 5)]]
        with pytest.raises(QueueFull) as full:
            b.submit("a", 6)
        results = await asyncio.gather(*futures, return_exceptions=True)
        await b.stop()
        return full.value, results

    full, results = asyncio.run(main())
    assert full.retry_after >= 1 and "5 requests waiting" in str(full)
    assert results[:4] == [(10, 2), (20, 1), (30, 2), (40, 1)]
    assert isinstance(results[4], ValueError)
    assert calls == [("a", [1, 3]), ("b", [2]), ("a", [4]), ("bad", [5])]


def test_a_request_over_its_timeout_gets_504_and_leaves_the_queue(generator_path):
    from fastapi.testclient import TestClient

    from gapdiff_core.serving import ServiceSettings
    from gapdiff_core.serving.app import create_app
    from gapdiff_core.serving.engine import Engine

    settings = ServiceSettings(generator=str(generator_path), precision="fp32", max_wait_ms=60_000, timeout=0.3)
    app = create_app(settings, Engine(settings))
    with TestClient(app) as c:
        r = c.post("/v1/protect", content=png(photo()))
        assert r.status_code == 504 and r.json()["error"]["kind"] == "timeout"
        assert "gapdiff_queue_depth 0.0" in c.get("/metrics").text


def test_not_ready_until_the_generator_loads(tmp_path):
    from fastapi.testclient import TestClient

    from gapdiff_core.serving import ServiceSettings
    from gapdiff_core.serving.app import create_app

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with TestClient(create_app(ServiceSettings(generator=str(broken)))) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline
        ready = c.get("/readyz")
        r = c.post("/v1/protect", content=png(photo()))
        assert c.get("/healthz").status_code == 200
    assert ready.status_code == 503 and ready.json()["status"] == "failed" and "broken" in ready.json()["error"]
    assert r.status_code == 503 and r.json()["error"]["kind"] == "not_ready"


def test_uploads_decode_in_memory_like_files_16_bit_png_included(tmp_path):
    from gapdiff_core.io import encode_image, load_image

    deep = np.random.default_rng(1).integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in deep)
    path = tmp_path / "deep.png"
    path.write_bytes(png_header_only(50, 40, bit_depth=16, rows=rows))
    from_file, uploaded = load_image(path), load_image("deep.png", data=path.read_bytes())
    np.testing.assert_array_equal(uploaded.rgb, from_file.rgb)
    np.testing.assert_array_equal(uploaded.rgb, ((deep.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    assert uploaded.notes == ["16-bit PNG reduced to 8 bits"]  # the exact reduction, read from the bytes twice
    assert str(uploaded.path) == "deep.png"
    assert decode(encode_image(uploaded.rgb)).tolist() == uploaded.rgb.tolist()


def test_serve_without_a_generator_file_exits_2_naming_it(tmp_path, capsys):
    from gapdiff_core.cli import main

    assert main(["serve", "-g", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: generator checkpoint not found" in capsys.readouterr().err


def test_every_socket_of_the_service_listens_on_loopback_only(server):
    """The server process and all it started (for Ray: GCS, raylet, agents, proxy, replicas) listen on loopback."""
    listening = listening_sockets(server.proc.pid)
    assert listening, "no listening socket found for the service's processes"
    assert [a for a in listening if not a[0].startswith("127.") and a[0] != "::1"] == []
    assert ("127.0.0.1", server.port) in listening


def listening_sockets(root: int) -> set:
    """(address, port) of every TCP socket in LISTEN state owned by `root` or its descendants (from /proc)."""
    import ipaddress
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        grown = bool(children)
    inodes = set()
    for pid in tree:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word little-endian
            ip = ipaddress.ip_address(raw)
            found.add((str(ip.ipv4_mapped) if ip.version == 6 and ip.ipv4_mapped else str(ip), int(port, 16)))
    return found


# ------------------------------------------------------------------ the request path: routers, schemas, settings

def all_routes(routes):
    """Every route of an app, those of included routers too (newer FastAPI keeps an included router as one entry)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from all_routes(inner.routes) if inner is not None else [route]


def test_every_route_but_health_readiness_metrics_and_docs_requires_the_key(monkeypatch, tmp_path):
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient

    from gapdiff_core.serving import ServiceSettings
    from gapdiff_core.serving.app import create_app
    from gapdiff_core.serving.dependencies import require_api_key

    monkeypatch.setenv("GAPDIFF_TEST_KEY", API_KEY)
    app = create_app(ServiceSettings(generator=str(tmp_path / "none.safetensors"), api_key_env="GAPDIFF_TEST_KEY"))
    open_paths = {"/healthz", "/readyz", "/metrics", app.openapi_url, app.docs_url, app.redoc_url,
                  app.swagger_ui_oauth2_redirect_url}
    routes = list(all_routes(app.routes))
    keyed = [r for r in routes if r.path not in open_paths]
    assert {r.path for r in keyed} >= {"/v1/protect", "/v1/protect/batch"}
    with TestClient(app) as c:
        for route in routes:
            for method in sorted(route.methods - {"HEAD"}):
                anonymous = c.request(method, route.path)
                if route in keyed:
                    assert anonymous.status_code == 401, (method, route.path, anonymous.text)
                    assert anonymous.json()["error"]["kind"] == "unauthorized"
                    keyed_answer = c.request(method, route.path, headers={"X-API-Key": API_KEY})
                    assert keyed_answer.status_code != 401, (method, route.path)
                else:
                    assert anonymous.status_code != 401, (method, route.path)
    for route in keyed:  # declared as a dependency (the router's), not called by each endpoint
        assert isinstance(route, APIRoute)
        assert require_api_key in [d.call for d in route.dependant.dependencies], route.path


def test_openapi_documents_every_json_answer_and_takes_choices_from_the_constants(tmp_path):
    from gapdiff_core.model.protector import MODES
    from gapdiff_core.serving import ServiceSettings
    from gapdiff_core.serving.app import create_app
    from gapdiff_core.serving.service import FORMATS

    spec = create_app(ServiceSettings(generator=str(tmp_path / "g.safetensors"))).openapi()
    schemas, paths = spec["components"]["schemas"], spec["paths"]

    def ref(response):
        return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    batch = paths["/v1/protect/batch"]["post"]["responses"]
    assert ref(batch["200"]) == "BatchAnswer"
    items = schemas["BatchAnswer"]["properties"]["results"]["items"]["anyOf"]
    assert {i["$ref"].rsplit("/", 1)[1] for i in items} == {"ProtectedImage", "FailedImage"}
    assert {"image_base64", "max_change", "psnr", "batch_size", "demo"} <= set(schemas["ProtectedImage"]["required"])
    assert ref(paths["/healthz"]["get"]["responses"]["200"]) == "Health"
    ready = paths["/readyz"]["get"]["responses"]
    assert (ref(ready["200"]), ref(ready["503"])) == ("Readiness", "NotReady")
    for path in ("/v1/protect", "/v1/protect/batch"):
        operation = paths[path]["post"]
        assert all(ref(operation["responses"][s]) == "ErrorBody" for s in ("401", "413", "422", "429", "503"))
        query = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert query["mode"]["enum"] == list(MODES) and query["format"]["enum"] == list(FORMATS)
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        assert form["mode"]["enum"] == list(MODES) and form["format"]["enum"] == list(FORMATS)
    assert schemas["Readiness"]["properties"]["mode"]["enum"] == list(MODES)


def test_settings_take_flags_over_environment_over_yaml_over_defaults(tmp_path):
    from gapdiff_core.serving.settings import ServiceSettings, load_settings

    config = tmp_path / "serve.yaml"
    config.write_text("generator: from-yaml.safetensors\nmax_batch: 2\nmax_queue: 3\nmax-wait-ms: 4\nport: 9000\n")
    env = {"GAPDIFF_SERVE_MAX_QUEUE": "30", "GAPDIFF_SERVE_MAX_WAIT_MS": "40", "GAPDIFF_SERVE_RAY": "true"}
    settings, server = load_settings({"max_wait_ms": 400.0, "budget": None}, config=config, environ=env)
    assert (settings.generator, settings.max_batch) == ("from-yaml.safetensors", 2)  # YAML over defaults
    assert settings.max_queue == 30 and server.ray is True  # environment over YAML
    assert settings.max_wait_ms == 400.0  # flags over the environment
    assert settings.budget is None and settings.timeout == ServiceSettings.model_fields["timeout"].default
    assert (server.port, server.host) == (9000, "127.0.0.1")
    named, _ = load_settings({}, environ={"GAPDIFF_SERVE_CONFIG": str(config)})  # the file named in the environment
    assert named.generator == "from-yaml.safetensors"


@pytest.mark.parametrize("yaml_text, env, flags, words", [
    ("generator: g\nbudget: 0.5\n", {}, {}, "serve.yaml: budget = 0.5: budget must be 1-255 grey levels"),
    ("generator: g\n", {"GAPDIFF_SERVE_BUDGET": "nan"}, {},
     "environment variable GAPDIFF_SERVE_BUDGET = 'nan': budget must be 1-255 grey levels"),
    ("generator: g\n", {"GAPDIFF_SERVE_MAX_BATCH": "0"}, {},
     "environment variable GAPDIFF_SERVE_MAX_BATCH = '0': Input should be greater than or equal to 1"),
    ("generator: g\nmode: fast\n", {}, {}, "serve.yaml: mode = 'fast': Input should be 'working' or 'native'"),
    ("generator: g\nprecision: fp8\n", {}, {}, "serve.yaml: precision = 'fp8'"),
    ("generator: g\nmax_batchs: 2\n", {}, {}, "serve.yaml: max_batchs: unknown setting; known: generator"),
    ("generator: g\n", {"GAPDIFF_SERVE_PORTT": "1"}, {}, "environment variable GAPDIFF_SERVE_PORTT: unknown setting"),
    ("generator: g\n", {}, {"port": 70000}, "flag --port = 70000: Input should be less than or equal to 65535"),
    ("max_batch: 2\n", {}, {}, "no generator checkpoint: give -g/--generator"),
    ("- generator\n", {}, {}, "serve.yaml: expected settings as 'name: value' lines, not a list"),
    ("generator: [unclosed\n", {}, {}, "serve.yaml: not valid YAML"),
])
def test_a_bad_setting_is_refused_naming_its_source(tmp_path, yaml_text, env, flags, words):
    from gapdiff_core.serving.settings import SettingsError, load_settings

    config = tmp_path / "serve.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SettingsError) as error:
        load_settings(flags, config=config, environ=env)
    assert words in str(error.value)


def test_serve_refuses_a_bad_config_before_starting(tmp_path, capsys, monkeypatch):
    from gapdiff_core.cli import main

    config = tmp_path / "serve.yaml"
    config.write_text("max_queue: -1\n")
    assert main(["serve", "-g", str(tmp_path / "g.safetensors"), "--config", str(config)]) == 2
    assert f"{config}: max_queue = -1: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read the config file" in capsys.readouterr().err
    monkeypatch.setenv("GAPDIFF_SERVE_GENERATOR", str(tmp_path / "from-env.safetensors"))
    assert main(["serve"]) == 2  # the generator named in the environment is the one looked for
    assert "from-env.safetensors: generator checkpoint not found" in capsys.readouterr().err


# ------------------------------------------------------------------ Ray Serve: builder, version checks, floor

def test_application_builder_builds_the_deployment_as_serve_run_calls_it(generator_path, monkeypatch):
    pytest.importorskip("ray.serve")
    import importlib

    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from gapdiff_core.serving.settings import SettingsError

    build = importlib.import_module("gapdiff_core.serving.ray_serve").build  # `serve run module:build k=v`
    monkeypatch.setenv("GAPDIFF_SERVE_MAX_BATCH", "3")
    app = call_user_app_builder_with_args_if_necessary(build, {"generator": str(generator_path), "replicas": "2",
                                                              "budget": "4", "num_cpus": "0.5"})
    assert isinstance(app, Application)
    deployment = app._bound_deployment  # Ray keeps what bind() got here
    assert deployment.name == "protect" and deployment.num_replicas == 2
    assert deployment.ray_actor_options["num_cpus"] == 0.5
    settings, = deployment.init_args
    assert (settings.budget, settings.max_batch, settings.generator) == (4.0, 3, str(generator_path))
    with pytest.raises(SettingsError, match="argument budget = '0.5': budget must be 1-255"):
        build({"generator": str(generator_path), "budget": "0.5"})


@pytest.mark.ray
def test_the_built_application_serves_on_loopback(generator_path, monkeypatch):
    """build() as Ray Serve runs it: a local loopback-only Ray, Serve's proxy on 127.0.0.1, one protected photo."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from gapdiff_core.common.ray_local import LOCAL_ONLY_VARIABLE, start_ray
    from gapdiff_core.serving.ray_serve import build

    monkeypatch.setenv(LOCAL_ONLY_VARIABLE, "0")  # start_ray sets it; restored after the test
    monkeypatch.setenv("GAPDIFF_SERVE_PRECISION", "fp32")
    port = free_port()
    try:
        start_ray(num_cpus=2)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"generator": str(generator_path), "num_cpus": "1"}), name="built", route_prefix="/",
                  blocking=False)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 120
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the built application never became ready"
                time.sleep(0.5)
            rgb = photo(seed=12)
            r = post(c, rgb)
        assert r.status_code == 200, r.text
        change = np.abs(decode(r.content).astype(int) - rgb.astype(int))
        assert 0 < change.max() <= 8 and r.headers["x-gapdiff-demo"] == "true"
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def test_private_ray_hooks_warn_naming_the_version_instead_of_failing(monkeypatch):
    pytest.importorskip("ray.serve")
    import ray
    from ray.serve._private import replica

    from gapdiff_core.serving import ray_serve

    original = replica.add_port_to_grpc_server
    monkeypatch.setattr(replica, "add_port_to_grpc_server", original)  # restored after the test
    assert ray_serve.ray_version() >= ray_serve.GRPC_BIND_HOOK_SINCE
    ray_serve.bind_replica_grpc_to_loopback()  # this Ray has the hook: patched, no warning
    assert replica.add_port_to_grpc_server.loopback is True

    monkeypatch.setattr(replica, "add_port_to_grpc_server", original)
    monkeypatch.setattr(ray, "__version__", "2.57.1")  # 2.56-2.57 bind with add_insecure_port("[::]:0")
    with pytest.warns(RuntimeWarning, match=r"Ray 2\.57\.1: .* listens on every interface"):
        ray_serve.bind_replica_grpc_to_loopback()
    assert replica.add_port_to_grpc_server is original

    monkeypatch.setattr(ray, "__version__", "2.60.0")
    monkeypatch.delattr(replica, "add_port_to_grpc_server")  # a later Ray that renamed it
    with pytest.warns(RuntimeWarning, match=r"Ray 2\.60\.0: no ray\.serve\._private\.replica"):
        ray_serve.bind_replica_grpc_to_loopback()


def test_ray_serve_floor_is_the_first_ray_with_what_the_code_uses(monkeypatch):
    """pyproject's ray[serve] floor is RAY_FLOOR, 2.56: the first release whose serve.ingress() takes no app and
    builds it with __serve_build_asgi_app__ (2.55.1's ingress requires an app); the installed Ray has that form."""
    import inspect
    import re

    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from gapdiff_core.serving import ray_serve

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"ray\[serve\]>=([0-9.]+)"', text)[1]
    assert ray_serve.ray_version(floor) == ray_serve.RAY_FLOOR == (2, 56)
    assert ray_serve.ray_version() >= ray_serve.RAY_FLOOR
    assert inspect.signature(serve.ingress).parameters["app"].default is None
    monkeypatch.setattr(ray, "__version__", "2.55.1")
    with pytest.raises(ImportError, match=r"needs ray\[serve\]>=2\.56 .* this is Ray 2\.55\.1"):
        ray_serve.check_ray_version()
