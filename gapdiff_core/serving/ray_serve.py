"""The protection service on Ray Serve: the same app (`app.create_app`, with its batcher) in every replica.

Each replica loads the generator once, then serves the FastAPI app through `@serve.ingress()` (the late-bound form,
Ray 2.56 and later); Ray's HTTP proxy spreads requests over the replicas and restarts a replica that dies.
`build` is the application builder for `serve run gapdiff_core.serving.ray_serve:build generator=G.safetensors`,
`serve deploy` and KubeRay; `gapdiff serve --ray` deploys the same application, starting a local Ray instance on
loopback only (no dashboard) when no address is given. Needs the `ray` extra (`ray[serve]`).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import warnings
from typing import Any

from ..common.ray_local import LOCAL_ONLY_VARIABLE
from .settings import ServerSettings, ServiceSettings, api_key, load_settings

APP_NAME = "gapdiff"
#: The first Ray with `serve.ingress()` without an app and `__serve_build_asgi_app__` (pyproject's floor).
RAY_FLOOR = (2, 56)
#: The first Ray whose replicas bind their gRPC server through `ray.serve._private.replica.add_port_to_grpc_server`
#: (2.56 and 2.57 call `add_insecure_port("[::]:0")` on the server directly).
GRPC_BIND_HOOK_SINCE = (2, 58)


def build(args: dict[str, Any]):
    """Ray Serve application builder. `args` are settings by name (as `serve run ... name=value` passes them, or
    `args:` in a Serve config file), over `GAPDIFF_SERVE_*` variables, over the YAML file named by `config`, over
    the defaults (serving/settings.py); `replicas`, `num_cpus` and `num_gpus` size the deployment. The HTTP address
    is Serve's own (`serve run`/`serve deploy` options): host, port, ray, address and graceful_timeout are unused."""
    args = dict(args)
    config = args.pop("config", None)
    service, server = load_settings(args, given_as="argument", config=config)
    api_key(service)  # a key no header can carry is refused here, not in every replica
    return protection_app(service, server)


def protection_app(settings: ServiceSettings, server: ServerSettings):
    """A bound Ray Serve application of `server.replicas` replicas, each with `num_cpus` CPUs and `num_gpus` GPUs."""
    check_ray_version()
    from ray import serve

    from .app import create_app
    from .engine import Engine

    @serve.ingress()
    class ProtectionService:
        def __init__(self, settings: ServiceSettings):
            if os.environ.get(LOCAL_ONLY_VARIABLE) == "0":
                bind_replica_grpc_to_loopback()
            self.settings = settings
            self.engine = Engine(settings)  # loaded before the replica counts as started

        def __serve_build_asgi_app__(self):
            return create_app(self.settings, self.engine)

    env = {name: os.environ[name] for name in (settings.api_key_env,) if name in os.environ}
    deployment = serve.deployment(
        ProtectionService, name="protect", num_replicas=server.replicas,
        max_ongoing_requests=settings.max_queue + settings.max_batch,  # the replica's own queue answers 429
        ray_actor_options={"num_cpus": server.num_cpus, "num_gpus": server.num_gpus,
                           "runtime_env": {"env_vars": env}})
    return deployment.bind(settings)


def deploy(settings: ServiceSettings, server: ServerSettings, on_ray_started=None) -> None:
    """Start (or join) Ray, then call `on_ray_started()` if given, start Serve's HTTP proxy on host:port and run
    the application (returns when every replica is up)."""
    from ray import serve

    from ..common.ray_local import start_ray

    start_ray(server.address, num_cpus=None if server.address else
              max(os.cpu_count() or 1, int(server.replicas * server.num_cpus) + 1))
    if on_ray_started is not None:
        on_ray_started()
    if os.environ.get(LOCAL_ONLY_VARIABLE) == "0":
        grpc_loopback_gap()  # warns here, on the driver's console, as well as in each replica's log
    serve.start(http_options={"host": server.host, "port": server.port})
    serve.run(protection_app(settings, server), name=APP_NAME, route_prefix="/", blocking=False)


def run_ray_serve(settings: ServiceSettings, server: ServerSettings) -> None:
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
        deploy(settings, server, on_ray_started=catch_signals)
        print(f"gapdiff serve --ray: listening on http://{server.host}:{server.port} ({server.replicas} replicas)",
              flush=True)
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ray.is_initialized():
            ray.shutdown()


def ray_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of `version`, default the installed Ray's."""
    if version is None:
        import ray

        version = ray.__version__
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def check_ray_version() -> None:
    """ImportError (the CLI's "install the extra" answer) when the installed Ray predates RAY_FLOOR."""
    import ray

    if ray_version() < RAY_FLOOR:
        raise ImportError(f"gapdiff's Ray Serve deployment needs ray[serve]>={'.'.join(map(str, RAY_FLOOR))} "
                          f"(serve.ingress() without an app); this is Ray {ray.__version__}")


def grpc_loopback_gap() -> str | None:
    """Why this Ray's replicas cannot have their gRPC server bound to loopback (also warned), or None."""
    import ray

    if ray_version() >= GRPC_BIND_HOOK_SINCE:
        from ray.serve._private import replica

        if callable(getattr(replica, "add_port_to_grpc_server", None)):
            return None
    gap = (f"Ray {ray.__version__}: no ray.serve._private.replica.add_port_to_grpc_server to bind each replica's "
           f"inter-deployment gRPC server to 127.0.0.1 (gapdiff does it for Ray "
           f"{'.'.join(map(str, GRPC_BIND_HOOK_SINCE))} and later); that server listens on every interface ([::]), "
           "so the local instance is not loopback-only: keep this machine behind a firewall")
    warnings.warn(gap, RuntimeWarning, stacklevel=2)
    return gap


def bind_replica_grpc_to_loopback() -> None:
    """Ray Serve binds each replica's inter-deployment gRPC server to [::] (every interface), with no setting for
    it; in a loopback-only local instance (see ray_local) it is bound to 127.0.0.1 like every other Ray server.
    Where this Ray has no hook for it, `grpc_loopback_gap` warns instead."""
    if grpc_loopback_gap() is not None:
        return
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "loopback", False):
        return

    def loopback(server, address: str):
        return bind(server, address.replace("[::]", "127.0.0.1"))

    loopback.loopback = True
    replica.add_port_to_grpc_server = loopback
