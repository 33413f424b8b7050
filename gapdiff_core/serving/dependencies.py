"""What the endpoints depend on, as FastAPI dependencies: the app's `Service`, the API key check (every router but
the open one declares it, so an endpoint added there cannot forget it) and the loaded engine (503 until ready)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .engine import Engine
from .service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_api_key(request: Request, service: ServiceDep) -> None:
    """401 unless the request carries the service's API key (when one is set)."""
    service.check_key(request)


def ready_engine(service: ServiceDep) -> Engine:
    """The loaded engine; 503 while the generator loads or after it failed to."""
    return service.ready_engine()


EngineDep = Annotated[Engine, Depends(ready_engine)]
