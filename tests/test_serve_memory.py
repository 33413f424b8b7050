"""The service's memory is bounded by its settings (issue 23, item 1): a burst at the limits, scaled down from the
issue's 16 x 36 MP batch and 4 concurrent singles so it runs in seconds, keeps a server process under
serving.memory's formula (its peak RSS read from /proc), refuses what is over the limits, and the next request
succeeds. bench/serve.py --memory runs the same burst at full size."""
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from test_serve import Server  # noqa: E402

from gapdiff_core.serving.memory import generator_working_memory, peak_memory_bound, process_memory  # noqa: E402
from gapdiff_core.serving.settings import load_settings  # noqa: E402

SIDE = 1500  # 2.25 MP images; the 6000 x 6000 (36 MP) scaled by 1/16 in pixels
LIMITS = {"max_pixels": SIDE * SIDE, "max_request_pixels": 16 * SIDE * SIDE, "max_queue_pixels": 20 * SIDE * SIDE,
          "max_batch_pixels": 2 * SIDE * SIDE, "max_batch": 8, "max_queue": 64, "max_wait_ms": 50,
          "limit_concurrency": 16, "max_body_mb": 1, "precision": "fp32", "timeout": 300}


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_a_burst_at_the_limits_stays_under_the_memory_formula(saturated_generator_file, tmp_path):
    flags = [part for name, value in LIMITS.items() for part in (f"--{name.replace('_', '-')}", str(value))]
    settings, server_settings = load_settings({"generator": str(saturated_generator_file), **LIMITS}, environ={})
    generator = generator_working_memory(settings)
    image = flat_png(SIDE)
    batch = [("images", (f"{i}.png", image, "image/png")) for i in range(16)]
    s = Server(saturated_generator_file, flags, tmp_path, 60, tmp_path)
    try:
        ready = process_memory(s.proc.pid, "VmRSS")
        with s.client() as c, ThreadPoolExecutor(6) as pool:
            first = pool.submit(c.post, "/v1/protect/batch", files=batch)
            deadline = time.monotonic() + 30
            while "gapdiff_queue_depth 0.0" in c.get("/metrics").text:  # the batch is admitted and queued
                assert time.monotonic() < deadline
            second = c.post("/v1/protect/batch", files=batch)  # 16 + 16 images: over the queue's pixel budget
            singles = list(pool.map(lambda _: c.post("/v1/protect", content=image), range(4)))  # 16 + 4: within
            answers = first.result()
            peak = process_memory(s.proc.pid, "VmHWM")
            after = c.post("/v1/protect", content=image)
    finally:
        s.stop()
    bound = peak_memory_bound(settings, server_settings, ready, generator)
    failures = [r["error"] for r in answers.json()["results"] if not r["ok"]] if answers.status_code == 200 else ""
    assert answers.status_code == 200 and answers.json()["protected"] == 16, failures or answers.text[:500]
    assert [r.status_code for r in singles] == [200] * 4
    assert second.status_code == 429 and second.json()["error"]["kind"] == "queue_full"
    assert after.status_code == 200
    print(f"peak {peak / 2 ** 20:.0f} MiB, ready {ready / 2 ** 20:.0f} MiB, generator {generator / 2 ** 20:.0f} MiB, "
          f"bound {bound / 2 ** 20:.0f} MiB")
    assert peak <= bound, f"peak RSS {peak / 2 ** 20:.0f} MiB over the formula's {bound / 2 ** 20:.0f} MiB"
