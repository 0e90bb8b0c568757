"""Settings of the worker, from the environment (pydantic-settings) and CLI flags.

Every field is read from `MODERATION_<FIELD>` (e.g. `MODERATION_MAX_BATCH_SIZE`), except the
broker list, which is `KAFKA_BOOTSTRAP_SERVERS` (or `MODERATION_BOOTSTRAP_SERVERS`). CLI flags
override the environment. A bad value fails fast with one line naming the setting.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MODERATION_"


class SettingsError(ValueError):
    """A setting is invalid; the message is one line fit for the terminal."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, populate_by_name=True, extra="forbid", frozen=True
    )

    # Kafka
    bootstrap_servers: Annotated[
        str,
        Field(
            min_length=1,
            validation_alias=AliasChoices(
                "KAFKA_BOOTSTRAP_SERVERS", "MODERATION_BOOTSTRAP_SERVERS"
            ),
            description="Comma-separated host:port list (env KAFKA_BOOTSTRAP_SERVERS).",
        ),
    ] = "localhost:9092"
    input_topic: Annotated[str, Field(min_length=1)] = "comments"
    output_topic: Annotated[str, Field(min_length=1)] = "comment-scores"
    dlq_topic: Annotated[str, Field(min_length=1)] = "comments-dlq"
    group_id: Annotated[str, Field(min_length=1)] = "moderation-worker"
    client_id: str = "moderation-worker"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    commit_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 30_000
    max_poll_records: Annotated[int, Field(ge=1)] = 1000
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 20
    producer_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    producer_max_batch_bytes: Annotated[int, Field(ge=1024)] = 262_144
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    producer_idempotence: bool = False

    # Kafka security (passed through to aiokafka)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # Model and batching
    model: str | None = Field(
        default=None, description="Hub id or local directory; None = bundled."
    )
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    # How long the backend, once free, waits for a fuller batch (0: it takes what is queued).
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0
    max_length: Annotated[int, Field(ge=8, le=8192)] = 128
    max_text_bytes: Annotated[int, Field(ge=1)] = 65_536
    max_in_flight: Annotated[int, Field(ge=1)] = 2048
    # Intra-op threads of the backend (torch or ONNX Runtime); auto (or 0): from the CPUs this
    # process may use (affinity mask and cgroup quota), see worker/hardware.py.
    torch_threads: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    torch_interop_threads: Annotated[int, Field(ge=0)] = 0
    # auto: bf16 where the CPU computes it natively (or on a GPU), else fp32; ONNX: int8 where
    # the artifact kept an int8 graph (it passed the accuracy rule at export). worker/runtime.py
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    token_budget: Annotated[int, Field(ge=0)] = 2048

    # Service
    shutdown_grace_s: Annotated[float, Field(gt=0, le=3600)] = 25
    metrics_host: str = "0.0.0.0"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Perspective-compatible HTTP API (worker/http_api.py): its own port, off (None) by default
    http_api_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    http_api_host: str = "0.0.0.0"
    # None: `?key=` is accepted and ignored; set: requests must carry this key
    http_api_key: SecretStr | None = None
    http_api_max_text_bytes: Annotated[int, Field(ge=1)] = 20_480  # Perspective's 20 KB
    # texts of HTTP requests queued or being scored; beyond it: 429 RESOURCE_EXHAUSTED
    http_api_max_pending: Annotated[int, Field(ge=1)] = 512

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
            if not self.sasl_username or (
                self.sasl_password is None and self.sasl_password_file is None
            ):
                raise ValueError("SASL needs sasl_username and sasl_password (or _file)")
        for name in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: file {path} does not exist")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.max_in_flight < self.max_batch_size:
            raise ValueError("max_in_flight must be at least max_batch_size")
        if self.http_api_port and self.http_api_port == self.metrics_port:
            raise ValueError("http_api_port must differ from metrics_port")
        return self

    def password(self) -> str | None:
        """The SASL password, from the environment or the mounted file (never logged)."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None

    def kafka_security_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's consumer and producer."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.password(),
            }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        if self.ssl_certfile and self.ssl_keyfile:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
        return context

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        return self.model_dump(mode="json", exclude={"sasl_password", "http_api_key"}) | {
            "sasl_password": "***" if self.sasl_password else None,
            "http_api_key": "***" if self.http_api_key else None,
        }


def _env_name(field: str) -> str:
    if field == "bootstrap_servers":
        return "KAFKA_BOOTSTRAP_SERVERS"
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None `overrides` (CLI flags) on top.

    Raises `SettingsError` with one line naming the setting and its environment variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        field = loc if loc in Settings.model_fields else None
        where = f"{field} ({_env_name(field)})" if field else "settings"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SettingsError(f"invalid {where}: {error['msg']}{more}") from None
