"""The protection service on Ray Serve: the same app (`app.create_app`, with its batcher) in every replica.

Each replica loads the generator once, then serves the FastAPI app through `@serve.ingress`; Ray's HTTP proxy
spreads requests over the replicas and restarts a replica that dies. Without an address a local Ray instance is
started on loopback only (no dashboard). Needs the `ray` extra (`ray[serve]`).
"""
from __future__ import annotations

import os
import signal
import threading

from ..common.ray_local import LOCAL_ONLY_VARIABLE
from .engine import ServiceSettings

APP_NAME = "gapdiff"


def protection_app(settings: ServiceSettings, *, replicas: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0):
    """A bound Ray Serve application of `replicas` replicas, each with `num_cpus` CPUs and `num_gpus` GPUs."""
    from ray import serve

    from .app import create_app
    from .engine import Engine

    @serve.ingress()
    class ProtectionService:
        def __init__(self, settings: ServiceSettings):
            if os.environ.get(LOCAL_ONLY_VARIABLE) == "0":
                _bind_replica_grpc_to_loopback()
            self.settings = settings
            self.engine = Engine(settings)  # loaded before the replica counts as started

        def __serve_build_asgi_app__(self):
            return create_app(self.settings, self.engine)

    env = {name: os.environ[name] for name in (settings.api_key_env,) if name in os.environ}
    deployment = serve.deployment(
        ProtectionService, name="protect", num_replicas=replicas,
        max_ongoing_requests=settings.max_queue + settings.max_batch,  # the replica's own queue answers 429
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": env}})
    return deployment.bind(settings)


def deploy(settings: ServiceSettings, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
           num_gpus: float = 0.0, num_cpus: float = 1.0, address: str | None = None, on_ray_started=None) -> None:
    """Start (or join) Ray, then call `on_ray_started()` if given, start Serve's HTTP proxy on host:port and run
    the application (returns when every replica is up)."""
    from ray import serve

    from ..common.ray_local import start_ray

    start_ray(address, num_cpus=None if address else max(os.cpu_count() or 1, int(replicas * num_cpus) + 1))
    if on_ray_started is not None:
        on_ray_started()
    serve.start(http_options={"host": host, "port": port})
    serve.run(protection_app(settings, replicas=replicas, num_gpus=num_gpus, num_cpus=num_cpus),
              name=APP_NAME, route_prefix="/", blocking=False)


def run_ray_serve(settings: ServiceSettings, **options) -> None:
    """Deploy and serve until SIGINT/SIGTERM, then shut the application down (replicas finish in-flight requests
    within Serve's graceful shutdown timeout) and leave Ray."""
    import ray
    from ray import serve

    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def catch_signals():  # after ray.init, which installs a handler that aborts the process on SIGTERM
        for sig in signals:
            signal.signal(sig, lambda *_: stop.set())

    try:
        deploy(settings, **options, on_ray_started=catch_signals)
        print(f"gapdiff serve --ray: listening on http://{options.get('host', '127.0.0.1')}:"
              f"{options.get('port', 8000)} ({options.get('replicas', 1)} replicas)", flush=True)
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ray.is_initialized():
            ray.shutdown()


def _bind_replica_grpc_to_loopback() -> None:
    """Ray Serve binds each replica's inter-deployment gRPC server to [::] (every interface), with no setting for
    it; in a loopback-only local instance (see ray_local) it is bound to 127.0.0.1 like every other Ray server."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "loopback", False):
        return

    def loopback(server, address: str):
        return bind(server, address.replace("[::]", "127.0.0.1"))

    loopback.loopback = True
    replica.add_port_to_grpc_server = loopback
