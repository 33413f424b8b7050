"""Settings of the protection service, each from the first source that has it: command-line flags (or Ray Serve
builder arguments), then `GAPDIFF_SERVE_<NAME>` environment variables, then a YAML file, then the defaults here.
Every value is validated here, and a bad one is refused with a `SettingsError` that names where it came from."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..common.budget import check_budget
from ..common.devices import check_device
from ..model.protector import MODES, PRECISION_CHOICES

ENV_PREFIX = "GAPDIFF_SERVE_"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"  # the YAML file, when no --config is given


def _budget(value: float | None) -> float | None:
    return None if value is None else check_budget(value, "budget")


class ServiceSettings(BaseModel):
    """What the app runs with (the same for every replica)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generator: str
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"), AfterValidator(check_device)] = "auto"
    precision: Literal[PRECISION_CHOICES] = "auto"
    budget: Annotated[float | None, AfterValidator(_budget)] = None  # default budget: the checkpoint's
    mode: Literal[MODES] = "working"
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(64, ge=1)
    timeout: float = Field(60.0, gt=0)  # per request, seconds
    max_body_mb: float = Field(50.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)  # seconds to receive a whole request body (408 past it)
    max_pixels: int = Field(40_000_000, ge=1)  # one image
    max_request_pixels: int = Field(80_000_000, ge=1)  # all images of one request (413 over it)
    max_queue_pixels: int = Field(160_000_000, ge=1)  # all images admitted and not yet answered (429 over it)
    max_batch_pixels: int = Field(40_000_000, ge=1)  # all images of one generator batch (one image at least)
    max_batch_images: int = Field(16, ge=1)
    api_key_env: str = Field("GAPDIFF_API_KEY", min_length=1)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2 ** 20)


class ServerSettings(BaseModel):
    """How `gapdiff serve` runs the app: its address, uvicorn's graceful shutdown, Ray Serve's replicas."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    graceful_timeout: float = Field(30.0, ge=0)
    header_timeout: float = Field(10.0, gt=0)  # seconds from connection (or last answer) to a request's headers
    keep_alive_timeout: int = Field(5, ge=1)  # seconds an idle keep-alive connection stays open (uvicorn's)
    limit_concurrency: int = Field(32, ge=1)  # open connections and tasks; beyond it uvicorn answers 503
    max_header_kb: int = Field(64, ge=1)  # largest request head (h11_max_incomplete_event_size)
    ray: bool = False
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    address: str | None = None


NAMES = (*ServiceSettings.model_fields, *ServerSettings.model_fields)


class SettingsError(ValueError):
    """A setting that is unknown, missing or invalid; the message names its source."""


def load_settings(given: Mapping[str, Any], *, given_as: str = "flag", config: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[ServiceSettings, ServerSettings]:
    """The settings from `given` (flags or builder arguments: a None value is not given), the environment, the
    YAML file `config` (else the one `GAPDIFF_SERVE_CONFIG` names) and the defaults, in that order of precedence."""
    environ = os.environ if environ is None else environ
    config = config or environ.get(CONFIG_VARIABLE) or None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = [(_read_yaml(Path(config)) if config else {}, lambda name: f"{config}: {name}"),
              (_read_environment(environ), lambda name: f"environment variable {ENV_PREFIX}{name.upper()}"),
              (given, lambda name: f"{given_as} {_flag(name) if given_as == 'flag' else name}")]
    for layer, source in layers:  # lowest precedence first: later layers overwrite
        for name, value in layer.items():
            if name not in NAMES:
                raise SettingsError(f"{source(name)}: unknown setting; known: {', '.join(NAMES)}")
            if value is not None:
                values[name], sources[name] = value, source(name)
    if "generator" not in values:
        raise SettingsError("no generator checkpoint: give -g/--generator, set the environment variable "
                            f"{ENV_PREFIX}GENERATOR or put 'generator: PATH' in the config file")
    return (_validated(ServiceSettings, values, sources), _validated(ServerSettings, values, sources))


def api_key(settings: ServiceSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from the variable `settings.api_key_env` names (None when unset or empty). HTTP headers carry
    latin-1 text without surrounding spaces, so any other key could never be sent: SettingsError."""
    environ = os.environ if environ is None else environ
    key = environ.get(settings.api_key_env) or None
    if key is not None:
        try:
            key.encode("latin-1")
        except UnicodeEncodeError:
            raise SettingsError(f"environment variable {settings.api_key_env}: the API key has characters outside "
                                "latin-1, which an HTTP header cannot carry; use ASCII letters and digits") from None
        if key != key.strip() or not key.isprintable():
            raise SettingsError(f"environment variable {settings.api_key_env}: the API key has surrounding spaces "
                                "or control characters, which an HTTP header cannot carry")
    return key


def _validated(model: type[BaseModel], values: dict[str, Any], sources: dict[str, str]):
    mine = {name: value for name, value in values.items() if name in model.model_fields}
    try:
        return model(**mine)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{sources.get(name, name)} = {mine.get(name)!r}: {message}")
        raise SettingsError("; ".join(problems)) from None


def _read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {name[len(ENV_PREFIX):].lower(): value for name, value in environ.items()
            if name.startswith(ENV_PREFIX) and name != CONFIG_VARIABLE}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected settings as 'name: value' lines, not a {type(data).__name__}")
    return {str(name).replace("-", "_"): value for name, value in data.items()}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
