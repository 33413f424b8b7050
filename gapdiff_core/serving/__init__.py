"""The protection service: settings (flags, environment, YAML), the endpoints on FastAPI routers with their
dependencies and response models, dynamic batching, the engine, and the app (`app.create_app`), run on uvicorn in
one process (`run_uvicorn`) or on Ray Serve replicas (`ray_serve`, with the application builder `build`). Needs the
`serve` extra (and `ray` for Ray Serve)."""
from __future__ import annotations

from .settings import ServerSettings, ServiceSettings

__all__ = ["ServiceSettings", "run_uvicorn"]


def run_uvicorn(settings: ServiceSettings, server: ServerSettings) -> None:
    """Serve on uvicorn until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (up to
    `server.graceful_timeout`), and return. The connection limits and timeouts are uvicorn's (h11), with a deadline
    for each request's head (`header_timeout`) that uvicorn lacks."""
    import signal

    import uvicorn

    from .app import create_app

    # uvicorn re-raises the signal it stopped on once it has shut down; by then the stop was graceful, so the
    # re-raised SIGTERM is ignored here and `gapdiff serve` exits 0 (SIGINT still ends as KeyboardInterrupt).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(create_app(settings), host=server.host, port=server.port, log_level="info", access_log=False,
                    timeout_graceful_shutdown=server.graceful_timeout, http=_head_deadline(server.header_timeout),
                    timeout_keep_alive=server.keep_alive_timeout, limit_concurrency=server.limit_concurrency,
                    h11_max_incomplete_event_size=server.max_header_kb * 1024)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _head_deadline(seconds: float):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within `seconds` of
    opening or of its last answer (idle and slowly trickled heads alike)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._expect_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._expect_head()

        def _expect_head(self) -> None:
            waiting_after = self.cycle  # a new request head replaces it

            def check():
                if self.cycle is waiting_after and not self.transport.is_closing():
                    self.transport.close()
            self.loop.call_later(seconds, check)

    return HeadDeadlineProtocol
