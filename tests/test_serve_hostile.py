"""`gapdiff serve` under hostile or mistaken use (issue 23): options refused at start-up in one line, pixel budgets
checked from the headers, multipart parts counted while parsing, CPU work kept off the event loop, JPEG answers
measured as returned, failed batches that release their memory, and (in a server process) client disconnects,
graceful-timeout cancellations and read timeouts."""
import asyncio
import base64
import gc
import signal
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from test_serve import API_KEY, Server, decode, photo, png, png_header_only  # noqa: E402

from gapdiff_core.serving.batcher import Batcher  # noqa: E402


@pytest.fixture(scope="module")
def generator_path(saturated_generator_file):
    return saturated_generator_file


def client(generator_path, **limits):
    """An in-process TestClient of the service with a loaded engine and these settings."""
    from fastapi.testclient import TestClient

    from gapdiff_core.serving import ServiceSettings
    from gapdiff_core.serving.app import create_app
    from gapdiff_core.serving.engine import Engine

    settings = ServiceSettings(generator=str(generator_path), precision="fp32", **limits)
    return TestClient(create_app(settings, Engine(settings)))


def multipart(parts: list[tuple[str, str | None, bytes]], boundary="b0undary", end=True) -> tuple[bytes, dict]:
    """A multipart body of (field name, file name or None, data) parts, and its headers."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode() if end else b""
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# ------------------------------------------------------------------ options checked before anything loads

@pytest.mark.parametrize("flags, env, words", [
    (["--timeout", "-1"], {}, "flag --timeout = -1.0: Input should be greater than 0"),
    (["--port", "70000"], {}, "flag --port = 70000: Input should be less than or equal to 65535"),
    (["--max-batch", "0"], {}, "flag --max-batch = 0: Input should be greater than or equal to 1"),
    (["--budget", "0.5"], {}, "flag --budget = '0.5': budget must be 1-255 grey levels"),
    (["--budget", "nan"], {}, "flag --budget = 'nan': budget must be 1-255 grey levels"),
    (["--device", "cuda"], {}, "flag --device = 'cuda': CUDA is not available here"),
    ([], {"GAPDIFF_SERVE_DEVICE": "cuda:0"}, "environment variable GAPDIFF_SERVE_DEVICE = 'cuda:0': CUDA is not "
                                             "available here"),
    ([], {"GAPDIFF_API_KEY": "cl\u00e9\u2713"}, "environment variable GAPDIFF_API_KEY: the API key has characters "
                                                "outside latin-1"),
    ([], {"GAPDIFF_API_KEY": " key"}, "the API key has surrounding spaces"),
    (["--header-timeout", "0"], {}, "flag --header-timeout = 0.0: Input should be greater than 0"),
])
def test_a_bad_serve_option_exits_2_with_one_line_before_anything_loads(flags, env, words, tmp_path, capsys,
                                                                        monkeypatch):
    """Each is refused before the generator is looked for (the file does not exist) and in one line, whichever
    source it came from: the flag, the environment or the key's variable."""
    import torch

    from gapdiff_core.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "-g", str(tmp_path / "missing.safetensors"), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ multipart: one file, truncation, part caps

def test_two_files_to_protect_are_refused_not_silently_dropped(generator_path):
    body, headers = multipart([("image", "a.png", png(photo(seed=1))), ("image", "b.png", png(photo(seed=2)))])
    with client(generator_path) as c:
        r = c.post("/v1/protect", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["kind"] == "one_image_only"
    assert "/v1/protect/batch" in r.json()["error"]["message"]


def test_a_truncated_multipart_body_is_named_as_such(generator_path):
    body, headers = multipart([("image", "a.png", png(photo(seed=1)))])
    with client(generator_path) as c:
        r = c.post("/v1/protect", content=body[:len(body) // 2], headers=headers)
        whole = c.post("/v1/protect", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["kind"] == "bad_multipart", r.text
    assert "ends before its closing boundary" in r.json()["error"]["message"]
    assert whole.status_code == 200


@pytest.mark.parametrize("part, kind", [(("images", "x.png", b"x"), "too_many_images"),
                                        (("budget", None, b"8"), "too_many_parts")])
def test_parts_are_counted_while_parsing(generator_path, part, kind):
    """Past the cap the parser stops: the malformed rest of the body (which would be a bad_multipart error) is never
    reached, so a body of 400,000 tiny parts costs the parse of the first few."""
    body, headers = multipart([part] * 40, end=False)
    body += b"--b0undary\r\nthis header line has no colon and breaks the parser\r\n\r\n"
    with client(generator_path) as c:
        r = c.post("/v1/protect/batch", content=body, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["kind"] == kind, r.text


# ------------------------------------------------------------------ answers that tell the truth (format=jpg)

def test_jpg_answers_report_the_change_of_the_returned_file_and_warn_beyond_the_budget(generator_path):
    rgb = photo(seed=3)
    with client(generator_path) as c:
        single = c.post("/v1/protect", content=png(rgb), params={"format": "jpg", "budget": "4"})
        lossless = c.post("/v1/protect", content=png(rgb), params={"format": "png", "budget": "4"})
        batch = c.post("/v1/protect/batch", files=[("images", ("a.png", png(rgb), "image/png"))],
                       data={"format": "jpg", "budget": "2"})
    returned = np.abs(decode(single.content).astype(int) - rgb.astype(int))
    assert single.status_code == 200 and returned.max() > 4  # JPEG of a noisy photo breaks a 4-level budget
    assert float(single.headers["x-gapdiff-max-change"]) == returned.max()
    mse = (returned.astype(float) ** 2).mean()
    assert float(single.headers["x-gapdiff-psnr"]) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=0.01)
    assert "beyond the 4-level budget" in single.headers["x-gapdiff-warning"]
    assert "x-gapdiff-warning" not in lossless.headers and float(lossless.headers["x-gapdiff-max-change"]) <= 4
    result, = batch.json()["results"]
    returned = np.abs(decode(base64.b64decode(result["image_base64"])).astype(int) - rgb.astype(int))
    assert result["max_change"] == returned.max() > 2 and "beyond the 2-level budget" in result["warning"]


# ------------------------------------------------------------------ pixel budgets, from the headers

def test_pixel_budgets_refuse_from_the_headers_413_per_request_429_for_the_queue(generator_path):
    """The 3000x3000 images below are headers with 64 bytes of pixels: they could never be decoded, so a 413 or
    429 for them comes from the pixel counts their headers declare."""
    header_only = [("images", (f"{i}.png", png_header_only(3000, 3000), "image/png")) for i in range(3)]
    with client(generator_path, max_pixels=10_000_000, max_request_pixels=20_000_000, max_queue_pixels=12_000,
                max_wait_ms=1500) as c:
        service = c.app.state.service
        over_request = c.post("/v1/protect/batch", files=header_only)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/v1/protect", content=png(photo(64, 96, seed=4)))  # 6,144 px: admitted
            deadline = time.monotonic() + 10
            while service.admitted_pixels == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            full = c.post("/v1/protect", content=png(photo(64, 96, seed=5)))  # 6,144 more: over 12,000
            assert first.result().status_code == 200
        after = c.post("/v1/protect", content=png(photo(64, 96, seed=5)))
        assert service.admitted_pixels == 0  # every reservation released once its answer was sent
    assert over_request.status_code == 413 and over_request.json()["error"]["kind"] == "too_many_pixels"
    assert "27,000,000 pixels in all, over the 20,000,000 pixel budget of one request" in over_request.text
    assert full.status_code == 429 and full.json()["error"]["kind"] == "queue_full"
    assert "pixel budget" in full.json()["error"]["message"] and int(full.headers["retry-after"]) >= 1
    assert after.status_code == 200


def test_a_batch_takes_at_most_max_weight_and_the_oldest_request_alone_if_heavier():
    sizes = []

    async def main():
        b = Batcher(lambda key, payloads: sizes.append(list(payloads)) or list(payloads), max_batch=8,
                    max_wait_ms=50, max_weight=10)
        b.start()
        futures = [b.submit("k", name, weight) for name, weight in [("a", 4), ("b", 4), ("c", 4), ("huge", 50)]]
        results = await asyncio.gather(*futures)
        await b.stop()
        return results

    results = asyncio.run(main())
    assert sizes == [["a", "b"], ["c"], ["huge"]]
    assert results == [("a", 2), ("b", 2), ("c", 1), ("huge", 1)]


# ------------------------------------------------------------------ a failed batch releases its memory

def test_a_failed_batch_keeps_none_of_its_arrays():
    """The exception a failed batch hands to its requests carries no traceback whose frames hold the batch's
    arrays (on the old code the 7.5 GB of a failed 36 MP batch stayed held this way)."""
    held = []

    def run(key, payloads):
        work = np.ones(1000)
        held.append(weakref.ref(work))
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    async def main():
        b = Batcher(run, max_batch=2, max_wait_ms=0)
        b.start()
        outcome = await asyncio.gather(b.submit("k", 1), return_exceptions=True)
        await b.stop()
        return outcome

    errors = asyncio.run(main())
    gc.collect()
    assert isinstance(errors[0], RuntimeError) and held and held[0]() is None


def test_after_a_failed_batch_the_next_request_succeeds(generator_path, monkeypatch):
    with client(generator_path) as c:
        engine = c.app.state.service.engine
        run_batch = engine.run_batch
        calls = []

        def fail_once(key, jobs):
            calls.append(key)
            if len(calls) == 1:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
            return run_batch(key, jobs)

        monkeypatch.setattr(engine, "run_batch", fail_once)
        failed = c.post("/v1/protect", content=png(photo(seed=6)))
        ok = c.post("/v1/protect", content=png(photo(seed=6)))
    assert failed.status_code == 500 and failed.json()["error"]["kind"] == "protection_failed"
    assert "can't allocate memory" in failed.json()["error"]["message"]
    assert ok.status_code == 200


# ------------------------------------------------------------------ nothing CPU-heavy on the event loop

@pytest.mark.parametrize("stage", ["multipart", "stats", "base64"])
def test_cpu_work_runs_off_the_event_loop(generator_path, monkeypatch, stage):
    """Each stage is held inside until /healthz has been answered: on the event loop it would block /healthz
    until the hold times out (10 s)."""
    import python_multipart.multipart as multipart_module

    import gapdiff_core.metrics.fidelity as fidelity

    owner, name = {"multipart": (multipart_module.FormParser, "write"), "stats": (fidelity, "change_stats"),
                   "base64": (base64, "b64encode")}[stage]
    original, entered, gate = getattr(owner, name), threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        gate.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    with client(generator_path) as c, ThreadPoolExecutor(1) as pool:
        files = [("images", ("a.png", png(photo(seed=7)), "image/png"))]
        pending = pool.submit(c.post, "/v1/protect/batch", files=files)
        assert entered.wait(30)
        started = time.monotonic()
        health = c.get("/healthz")
        answered_while_held, seconds = not gate.is_set(), time.monotonic() - started
        gate.set()
        assert pending.result().status_code == 200
    assert health.status_code == 200 and answered_while_held and seconds < 5, seconds


def test_objects_alive_at_start_up_are_out_of_the_collectors_reach_and_bodies_arrive_whole(generator_path):
    """Once the service has started, what was alive then (modules, the model) is frozen: the collector's full
    passes, which pause the event loop, scan only what requests create (they took 30-80 ms before, the /healthz
    p99 under hostile load). A body of many chunks arrives whole."""
    body = png(photo(seed=8)) + b"\0" * 300_000  # trailing bytes after IEND: the same image, many chunks
    with client(generator_path) as c:
        assert gc.get_freeze_count() > 10_000
        streamed = c.post("/v1/protect", content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]))
        whole = c.post("/v1/protect", content=body)
    assert streamed.status_code == whole.status_code == 200 and streamed.content == whole.content


# ------------------------------------------------------------------ a server process: disconnects, shutdown, timeouts

def raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + body)
    return s


def until_closed(s: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends, and whether it closes the connection, within `seconds`."""
    s.settimeout(seconds)
    received = b""
    try:
        while chunk := s.recv(65536):
            received += chunk
        return received, True
    except (socket.timeout, TimeoutError):
        return received, False
    except ConnectionResetError:
        return received, True


@pytest.mark.slow
def test_disconnects_timeouts_and_shutdown_past_the_graceful_timeout(generator_path, tmp_path):
    """One server: clients that go away mid-body leave no traceback; a head or body that does not arrive in time
    closes the connection (408 JSON for the body); past --graceful-timeout a queued request gets the JSON error."""
    s = Server(generator_path, ["--header-timeout", "1", "--body-timeout", "1", "--graceful-timeout", "1",
                                "--max-wait-ms", "60000"], tmp_path, 60, tmp_path)
    try:
        head = (f"POST /v1/protect HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: image/png\r\n"
                "Content-Length: 100000\r\n\r\n").encode()
        for _ in range(5):  # mid-body disconnects
            raw_request(s.port, head, b"\x89PNG" + b"\0" * 996).close()
        idle = raw_request(s.port, b"")
        trickle = raw_request(s.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        slow_body = raw_request(s.port, head, b"\x89PNG")
        started = time.monotonic()
        assert until_closed(idle, 5)[1] and until_closed(trickle, 5)[1], "a connection without a head stayed open"
        answer, closed = until_closed(slow_body, 5)
        assert closed and time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 408") and b'"kind":"body_timeout"' in answer, answer
        with ThreadPoolExecutor(1) as pool, s.client() as c:
            queued = pool.submit(c.post, "/v1/protect", content=png(photo(seed=8)))  # waits 60 s for mates
            deadline = time.monotonic() + 10
            while "gapdiff_queue_depth 1.0" not in c.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert c.get("/healthz").status_code == 200  # the disconnects and timeouts left it serving
            s.proc.send_signal(signal.SIGTERM)
            r = queued.result(timeout=30)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "shutting_down", r.text
    finally:
        s.stop()
    log = s.proc.stdout.read()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log
