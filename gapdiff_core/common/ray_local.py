"""Start or join Ray for `gapdiff serve --ray` and `gapdiff evaluate --executor ray` (the `ray` extra)."""
from __future__ import annotations

import os
import warnings

#: Ray's single-machine switch: with it set to 0, a local instance started with node address 127.0.0.1 keeps that
#: address (otherwise Ray swaps it for the machine's outward address) and every Ray process listens on loopback.
LOCAL_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray instance on 127.0.0.1 only, without a dashboard
    (nothing listens on another interface). Does nothing when Ray is already initialised in this process."""
    if not address:
        os.environ[LOCAL_ONLY_VARIABLE] = "0"  # inherited by every Ray process started below
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    _keep_ray_on_loopback()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
             log_to_driver=False)


def _keep_ray_on_loopback() -> None:
    """Ray reads LOCAL_ONLY_VARIABLE when it is imported; if it was imported before, set its module constant too.
    That constant is private Ray API: where a Ray version lacks it, say so loudly (the variable still applies to
    every Ray process started from here, which is what keeps them on loopback)."""
    import ray

    try:
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    if ray_constants is None or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        warnings.warn(f"Ray {ray.__version__} has no ray._private.ray_constants.ENABLE_RAY_CLUSTER; relying on "
                      f"{LOCAL_ONLY_VARIABLE}=0 alone to keep the local Ray instance on 127.0.0.1", RuntimeWarning,
                      stacklevel=3)
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
