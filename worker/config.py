"""Settings of the worker, from the environment (pydantic-settings) and CLI flags.

Every field is read from `MODERATION_<FIELD>` (e.g. `MODERATION_MAX_BATCH_SIZE`), except the
broker list, which is `KAFKA_BOOTSTRAP_SERVERS` (or `MODERATION_BOOTSTRAP_SERVERS`). CLI flags
override the environment. A bad value fails fast with one line naming the setting.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MODERATION_"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
# Variables of earlier versions, ignored now: what a user who still sets one should know.
RETIRED_VARIABLES = {
    "MODERATION_OVERLAP_TOKENIZATION": "removed in issue 11: every record is tokenized once, "
    "on arrival, overlapping inference",
    "MODERATION_GIL_SWITCH_INTERVAL_MS": "removed in issue 21: a measured constant of the "
    "worker now (1 ms, docs/benchmarks.md)",
    "MODERATION_SHADOW_FLIP_RATE_ALERT": "removed in issue 21: the bound (5 %) is in the alert "
    "rule ModerationWorkerShadowFlagFlipRateHigh (deploy/prometheus/alerts.yaml)",
}
# Old names still read (with a warning at start): old name -> the field it sets
DEPRECATED_VARIABLES = {"MODERATION_TORCH_THREADS": "inference_threads"}  # until issue 21
# host:port, the host a name, an IPv4 address or a bracketed IPv6 address
_BROKER = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[^:]*)$")


class SettingsError(ValueError):
    """A setting is invalid; the message is one line fit for the terminal."""


class Settings(BaseSettings):
    """Each field's docstring is its line in docs/CONTRACTS.md (`make settings-table`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # Kafka
    bootstrap_servers: Annotated[
        str,
        Field(
            min_length=1,
            validation_alias=AliasChoices(BOOTSTRAP_ENV, "MODERATION_BOOTSTRAP_SERVERS"),
        ),
    ] = "localhost:9092"
    """Brokers, comma-separated host:port (also read from MODERATION_BOOTSTRAP_SERVERS)."""
    input_topic: Annotated[str, Field(min_length=1)] = "comments"
    """Topic of the comments to score."""
    output_topic: Annotated[str, Field(min_length=1)] = "comment-scores"
    """Topic of the scores, same key as the comment."""
    dlq_topic: Annotated[str, Field(min_length=1)] = "comments-dlq"
    """Dead-letter topic: bad records, untouched, with the reason in headers."""
    group_id: Annotated[str, Field(min_length=1)] = "moderation-worker"
    """Consumer group; workers with the same group share the input partitions."""
    client_id: str = "moderation-worker"
    """Kafka client id of the consumer and the producer (broker logs and quotas)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new consumer group starts."""
    commit_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000
    """How often the acknowledged prefix of each partition is committed."""
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 30_000
    """Consumer group session timeout: how soon a dead worker's partitions move on."""
    max_poll_records: Annotated[int, Field(ge=1)] = 1000
    """Records per fetch, at most."""
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 20
    """Longest a fetch waits for data; low keeps latency low on brokers that hold fetches."""
    producer_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    """How long the producer waits to fill a batch."""
    producer_max_batch_bytes: Annotated[int, Field(ge=1024)] = 262_144
    """Producer batch size in bytes, per partition."""
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    """Compression of outputs and dead letters."""
    producer_idempotence: bool = False
    """Idempotent producer (no duplicates from the producer's own retries)."""

    # Kafka security (passed through to aiokafka)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (masked in logs); or use MODERATION_SASL_PASSWORD_FILE."""
    sasl_password_file: Path | None = None
    """File holding the SASL password (e.g. a mounted secret)."""
    ssl_cafile: Path | None = None
    """CA bundle that verifies the brokers (default: the system's)."""
    ssl_certfile: Path | None = None
    """Client certificate for mutual TLS (with MODERATION_SSL_KEYFILE)."""
    ssl_keyfile: Path | None = None
    """Client key for mutual TLS (with MODERATION_SSL_CERTFILE)."""

    # Model and batching
    model: str | None = None
    """Artifact directory or Hugging Face hub id; unset: the bundled worker/default_model."""
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    """auto (a GPU where an NVIDIA driver is present), cpu, cuda or cuda:N."""
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 256
    """Records per batch, at most."""
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0
    """How long the backend, once free, waits for a fuller batch (0: it takes what is queued)."""
    max_length: Annotated[int, Field(ge=8, le=8192)] = 128
    """Tokens per text; longer texts are truncated."""
    max_text_bytes: Annotated[int, Field(ge=1)] = 65_536
    """Larger texts are dead-lettered (text_too_large)."""
    max_metadata_bytes: Annotated[int, Field(ge=2)] = 65_536
    """Larger metadata (as JSON) is dead-lettered (metadata_too_large); it is copied into the
    output, and parsed it takes several times its size."""
    max_in_flight: Annotated[int, Field(ge=1)] = 2048
    """Records consumed but not yet acknowledged, at most; at the limit the partitions pause."""
    max_in_flight_bytes: Annotated[int, Field(ge=65_536)] = 67_108_864
    """Bytes (key, value, headers) of the records consumed but not yet acknowledged, at most;
    at the limit the partitions pause, as at MODERATION_MAX_IN_FLIGHT (64 MiB: 2048 records
    of 32 KiB)."""
    inference_threads: Annotated[
        Literal["auto"] | Annotated[int, Field(ge=0)],
        Field(
            validation_alias=AliasChoices(
                "MODERATION_INFERENCE_THREADS", "MODERATION_TORCH_THREADS"
            )
        ),
    ] = "auto"
    """Intra-op threads of the backend (torch or ONNX Runtime); auto or 0: from the CPUs this
    process may use (affinity mask and cgroup quota), see worker/backends/hardware.py. Also read
    from MODERATION_TORCH_THREADS (deprecated)."""
    torch_interop_threads: Annotated[int, Field(ge=0)] = 0
    """torch inter-op threads (0: torch's default)."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    """auto: bf16 where the CPU computes it natively (or on a GPU), else fp32; ONNX: int8 where
    the artifact kept an int8 graph (it passed the accuracy rule at export). fp16: CUDA only;
    int8 (torch): CPU only; openvino: fp32 or bf16 (its inference precision). Scores stay
    float32 sigmoids."""
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    """auto: torch on a GPU; on a CPU the fastest of the installed backends the artifact allows
    (torch; onnx with its ONNX graph; openvino with model.onnx), timed at the first start on a
    machine (about 1 s) and remembered in MODERATION_CACHE_DIR (worker/backends/runtime.py)."""
    cache_dir: Path | None = None
    """Where the backend `auto` measured is remembered, per CPU, threads and artifact version;
    unset: $TMPDIR/moderation-worker (/tmp/moderation-worker). Not writable: measured at every
    start."""
    token_budget: Annotated[int, Field(ge=0)] = 2048
    """Padded tokens per forward pass: a batch is sorted by length and cut into passes of at
    most this many (0: off)."""
    language_detection: bool = True
    """Identify each comment's language (fastText lid.176, on the tokenizer thread): Kafka
    outputs carry `language`, the HTTP API's `detectedLanguages` is the detection, and text in
    a language the model does not serve follows the policy's `unsupported_language` mode."""

    # Threshold policy (worker/policy.py): a YAML or JSON file, re-read when it changes
    policy_file: Path | None = None
    """Threshold policy file (YAML, or JSON if named *.json; docs/CONTRACTS.md "Threshold
    policies"); unset: the model's thresholds."""
    policy_poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often the policy file is checked for a change (a valid change is swapped in between
    two batches)."""
    policy_max_bytes: Annotated[int, Field(ge=1024, le=67_108_864)] = 1_048_576
    """Largest policy file read, in bytes; a larger one (or one that is not a regular file: a
    FIFO, a device) is refused at start and rejected on reload (1 MiB: ~10,000 tenants)."""
    tenant_field: Annotated[str, Field(min_length=1)] = "tenant"
    """Key of a comment's metadata that holds its tenant (for per-tenant thresholds)."""
    tenant_header: Annotated[str, Field(min_length=1)] | None = None
    """Kafka header that holds the tenant; where set and present it wins over the metadata."""

    # Moderator feedback (schemas/feedback.py): decisions sent back, read by feedback-export
    feedback_topic: Annotated[str, Field(min_length=1)] = "comment-feedback"
    """Topic of moderator decisions (`Feedback` records, keyed by comment id)."""
    feedback_file: Path | None = None
    """Append-only JSON-lines file of moderator decisions (`comments:suggestscore`), used with
    MODERATION_HTTP_ONLY (with Kafka they go to the topic): one `Feedback` per line, each written
    whole and fsynced before the answer. Unset with HTTP only: suggestscore answers 501."""
    feedback_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    """`comments:suggestscore`: how long a decision may take to be acknowledged by the broker (or
    written to MODERATION_FEEDBACK_FILE); not stored by then: 503."""
    feedback_quality: bool = True
    """Live quality: count moderators' decisions per tenant x label (precision, recall,
    calibration gap). With Kafka, from the feedback topic, in consumer group
    `<MODERATION_GROUP_ID>-feedback`; HTTP only, from the decisions `comments:suggestscore`
    stores. Off: neither."""
    feedback_score_cache: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    """Comments whose published scores the worker remembers (an LRU, ~300 bytes each), for
    suggestscore's records and for decisions that carry no scores; 0: none."""

    # Shadow scoring (worker/shadow.py): a second model on the same batches, off the primary path
    shadow_model: str | None = None
    """Hub id or directory of a shadow model scored on the same batches; unset: none."""
    shadow_topic: Annotated[str, Field(min_length=1)] | None = None
    """Topic of the shadow's scores; unset: <output topic>-shadow."""
    shadow_queue_batches: Annotated[int, Field(ge=1, le=1024)] = 4
    """Batches the shadow may have waiting; beyond that, batches are skipped and counted."""

    # Tracing
    otel: bool = False
    """OpenTelemetry spans (needs the otel extra; exporter from the standard OTEL_* variables)."""

    # Service
    shutdown_grace_s: Annotated[float, Field(gt=0, le=3600)] = 25
    """On SIGTERM: how long in-flight work may take to finish and commit."""
    metrics_host: str = "0.0.0.0"
    """Address of the HTTP endpoints (/metrics, /healthz, /readyz)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9000
    """Port of the HTTP endpoints (0: any free port)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level (logs never carry comment text)."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap_servers(cls, value: str) -> str:
        """A comma-separated list of host:port, checked here rather than by the Kafka client
        (which would fail much later, with a traceback or a DNS error)."""
        for entry in value.split(","):
            broker = entry.strip()
            if "://" in broker:
                raise ValueError(f"{broker!r}: give host:port, without a scheme such as http://")
            match = _BROKER.match(broker)
            if match is None:
                raise ValueError(f"{broker!r} is not host:port (e.g. localhost:9092)")
            port = match["port"]
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{broker!r}: the port {port!r} is not a number in 1..65535")
        return value

    # Perspective-compatible HTTP API (worker/http/api.py)
    http_api_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Port of the Perspective-compatible HTTP API (its own, not the metrics port); unset: off."""
    http_only: bool = False
    """Serve the HTTP API alone, without Kafka (`run --http-only`): no Kafka client, no Kafka
    setting used; ready once the model is warm and the API listens. Needs
    MODERATION_HTTP_API_PORT; refuses a shadow model (its scores go to Kafka)."""
    http_api_host: Annotated[str, Field(min_length=1)] | None = None
    """Address the HTTP API listens on; unset: every interface (0.0.0.0) when
    MODERATION_HTTP_API_KEY is set, else 127.0.0.1 only (set it, e.g. to 0.0.0.0, to serve
    without a key beyond the pod, behind a NetworkPolicy or a mesh)."""
    http_api_key: SecretStr | None = None
    """API key the HTTP API requires (masked in logs); unset: `?key=` is accepted and ignored."""
    http_api_max_text_bytes: Annotated[int, Field(ge=1)] = 20_480
    """Largest comment.text the HTTP API takes, in UTF-8 bytes (Perspective's 20 KB)."""
    http_api_max_pending: Annotated[int, Field(ge=1)] = 512
    """Texts of HTTP requests queued or being scored, at most; beyond it: 429."""
    http_api_keepalive_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 75
    """HTTP API: a connection without a complete request line and headers for this long is
    closed (idle keep-alive, or headers trickling in); above a proxy's idle timeout (nginx: 60)."""
    http_api_body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10
    """HTTP API: a request body not received whole within this long is answered 408 and its
    connection closed."""
    http_api_max_connections: Annotated[int, Field(ge=1)] = 512
    """HTTP API: open connections at once, at most; one more is answered 503 and closed."""

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
        if self.policy_file is not None and not self.policy_file.is_file():
            raise ValueError(f"policy_file: file {self.policy_file} does not exist")
        if self.max_in_flight < self.max_batch_size:
            raise ValueError("max_in_flight must be at least max_batch_size")
        if self.http_api_port and self.http_api_port == self.metrics_port:
            raise ValueError("http_api_port must differ from metrics_port")
        if self.http_only and self.http_api_port is None:
            raise ValueError(
                "http_only (MODERATION_HTTP_ONLY, --http-only) needs MODERATION_HTTP_API_PORT: "
                "the HTTP API is all it serves"
            )
        if self.http_only and self.shadow_model is not None:
            raise ValueError(
                "http_only (MODERATION_HTTP_ONLY, --http-only) cannot run a shadow model "
                "(MODERATION_SHADOW_MODEL): its scores go to Kafka"
            )
        feedback = self.feedback_file
        if self.http_only and feedback is not None:
            if feedback.is_dir():
                raise ValueError(f"feedback_file: {feedback} is a directory, not a file")
            if not feedback.parent.is_dir():
                raise ValueError(
                    f"feedback_file: {feedback}: its directory {feedback.parent} does not exist"
                )
        return self

    @property
    def http_api_bind_host(self) -> str:
        """Where the HTTP API listens: `http_api_host`, else every interface with a key and
        the loopback interface without one."""
        if self.http_api_host is not None:
            return self.http_api_host
        return "0.0.0.0" if self.http_api_key is not None else "127.0.0.1"

    @property
    def shadow_output_topic(self) -> str:
        """Where shadow scores go: `shadow_topic`, else `<output_topic>-shadow`."""
        return self.shadow_topic or f"{self.output_topic}-shadow"

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
        return BOOTSTRAP_ENV
    return ENV_PREFIX + field.upper()


def default_text(field: str) -> str:
    """A setting's default as help and docs show it."""
    default = Settings.model_fields[field].default
    if default is None:
        return "bundled model" if field == "model" else "unset"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def env_names() -> dict[str, str]:
    """Every environment variable the settings read -> its field."""
    names = {_env_name(field): field for field in Settings.model_fields}
    return names | {ENV_PREFIX + "BOOTSTRAP_SERVERS": "bootstrap_servers"}


def _field_of(loc: str) -> str | None:
    """The settings field an error location names (a field or one of its variables)."""
    if loc in Settings.model_fields:
        return loc
    return (env_names() | DEPRECATED_VARIABLES).get(loc.upper())


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "string_too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    return str(error["msg"]).removeprefix("Value error, ")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per `MODERATION_*` variable no setting reads (a typo is otherwise silently
    ignored), naming the closest known setting where one is close."""
    environ = os.environ if environ is None else environ
    known = env_names()
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name in DEPRECATED_VARIABLES:
            continue
        if name in RETIRED_VARIABLES:
            warnings.append(f"{name} is ignored: {RETIRED_VARIABLES[name]}")
            continue
        suffixes = {known_name.removeprefix(ENV_PREFIX): known_name for known_name in known}
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
        warnings.append(f"unknown setting {name} is ignored{hint} (settings: docs/CONTRACTS.md)")
    return warnings


def deprecated_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per deprecated variable set (it is still read; the new name wins)."""
    environ = os.environ if environ is None else environ
    return [
        f"{name} is deprecated: set {_env_name(field)} instead (both are read; where both are "
        f"set, {_env_name(field)} wins)"
        for name, field in DEPRECATED_VARIABLES.items()
        if name in environ
    ]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None `overrides` (CLI flags) on top.

    Raises `SettingsError` with one line naming the setting and its environment variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = _field_of(str(error["loc"][0])) if error["loc"] else None  # [1:]: a union's arm
        where = f"{field} ({_env_name(field)})" if field else "settings"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SettingsError(f"invalid {where}: {_message(error)}{more}") from None
