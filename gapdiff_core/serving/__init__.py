"""The protection service: settings (flags, environment, YAML), the endpoints on FastAPI routers with their
dependencies and response models, dynamic batching, the engine, and the app (`app.create_app`), run on uvicorn in
one process (`run_uvicorn`) or on Ray Serve replicas (`ray_serve`, with the application builder `build`). Needs the
`serve` extra (and `ray` for Ray Serve)."""
from __future__ import annotations

from .settings import ServiceSettings

__all__ = ["ServiceSettings", "run_uvicorn"]


def run_uvicorn(settings: ServiceSettings, host: str = "127.0.0.1", port: int = 8000,
                graceful_timeout_s: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (up to `graceful_timeout_s`),
    and return."""
    import signal

    import uvicorn

    from .app import create_app

    # uvicorn re-raises the signal it stopped on once it has shut down; by then the stop was graceful, so the
    # re-raised SIGTERM is ignored here and `gapdiff serve` exits 0 (SIGINT still ends as KeyboardInterrupt).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False,
                    timeout_graceful_shutdown=graceful_timeout_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
