"""Threshold policies in force: loaded at start, re-read when the file changes, swapped whole.

`Policy` is what one model's outputs follow: thresholds in label order, by default and per tenant,
and the version written as `policy_version`. `PolicyHolder.current` is one immutable reference
(`Policies`: the primary's and the shadow's), read once per batch, so a reload takes effect
between batches and never inside one. `PolicyWatcher` polls the file: a change of the file it
resolves to (a Kubernetes ConfigMap swaps its `..data` symlink; `os.stat` follows it) or of its
size or modification time makes it read the file, and a different content hash reloads it. A
file that fails to parse or validate is rejected with one log line and
`moderation_policy_reload_failures_total`; the policy in force stays.

Policy files are JSON (`.json`) or YAML (any other name; pyyaml is a runtime dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from pydantic import ValidationError

from schemas import MODEL_POLICY_VERSION, ArtifactContract, ThresholdPolicy
from worker.lifecycle import Feature, cancel_and_wait, side_task
from worker.metrics import Metrics
from worker.records import InFlight

log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message is one line, fit for the terminal."""


class _TextLoader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: `version: 2026-12-01` stays the string it reads as."""


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_policy(data: bytes, name: str, labels: tuple[str, ...]) -> ThresholdPolicy:
    """The policy in `data` (JSON if `name` ends in .json, else YAML), checked against the
    model's `labels`; `PolicyError` (one line) if it is not a valid policy for this model."""
    try:
        if name.endswith(".json"):
            raw: Any = orjson.loads(data)
        else:
            raw = yaml.load(data, Loader=_TextLoader)  # a SafeLoader
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise PolicyError(f"policy file {name}: not valid {_format(name)}: {detail}") from None
    try:
        policy = ThresholdPolicy.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the document"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PolicyError(f"policy file {name}: {where}: {error['msg']}{more}") from None
    unknown = policy.unknown_labels(labels)
    if unknown:
        raise PolicyError(
            f"policy file {name} (version {policy.version}): the model has no label "
            f"{', '.join(map(repr, unknown))} (its labels: {', '.join(labels)})"
        )
    return policy


def _format(name: str) -> str:
    return "JSON" if name.endswith(".json") else "YAML"


def load_policy_file(path: Path, labels: tuple[str, ...]) -> ThresholdPolicy:
    """`parse_policy` of the file at `path`; `PolicyError` if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"policy file {path}: cannot read it: {exc.strerror or exc}") from None
    return parse_policy(data, str(path), labels)


@dataclass(frozen=True)
class TenantSource:
    """Where a comment's tenant is read: a Kafka header (if configured, and present on the
    record), else a string field of the comment's `metadata`."""

    metadata_field: str = "tenant"
    header: str | None = None

    def tenant_of(self, item: InFlight) -> str | None:
        if self.header is not None:
            for name, value in item.record.headers or ():
                if name == self.header and value is not None:
                    return value.decode("utf-8", errors="replace")
        metadata = item.comment.metadata if item.comment is not None else None
        if metadata:
            tenant = metadata.get(self.metadata_field)
            if isinstance(tenant, str):
                return tenant
        return None


@dataclass(frozen=True)
class Policy:
    """The thresholds one model's outputs follow, in that model's label order."""

    version: str
    labels: tuple[str, ...]
    default: np.ndarray  # (labels,) float
    tenants: Mapping[str, np.ndarray]
    source: TenantSource = field(default_factory=TenantSource)

    @classmethod
    def build(
        cls,
        contract: ArtifactContract,
        spec: ThresholdPolicy | None,
        source: TenantSource | None = None,
    ) -> Policy:
        """The model's thresholds, overridden by `spec`'s defaults, then by each tenant's."""
        model = dict(contract.label_thresholds)
        defaults = model | (dict(spec.thresholds) if spec else {})
        tenants = {
            name: np.array(
                [(defaults | tenant.thresholds)[label] for label in contract.labels], np.float64
            )
            for name, tenant in (spec.tenants.items() if spec else ())
        }
        return cls(
            version=spec.version if spec else MODEL_POLICY_VERSION,
            labels=contract.labels,
            default=np.array([defaults[label] for label in contract.labels], np.float64),
            tenants=tenants,
            source=source or TenantSource(),
        )

    def thresholds(self, tenant: str | None) -> np.ndarray:
        """Thresholds for `tenant` (the defaults for None or a tenant the policy does not list)."""
        if tenant is None:
            return self.default
        return self.tenants.get(tenant, self.default)

    def thresholds_for(self, items: list[InFlight]) -> np.ndarray:
        """(len(items), labels) thresholds, row by row for each item's tenant."""
        if not self.tenants:
            return np.broadcast_to(self.default, (len(items), len(self.labels)))
        return np.stack([self.thresholds(self.source.tenant_of(item)) for item in items])

    def flagged(self, item: InFlight, probabilities: np.ndarray) -> list[str]:
        """Labels at or above the item's tenant's thresholds."""
        thresholds = self.thresholds(self.source.tenant_of(item) if self.tenants else None)
        return [
            label
            for label, p, t in zip(self.labels, probabilities, thresholds, strict=True)
            if p >= t
        ]


@dataclass(frozen=True)
class Policies:
    """The policy in force for the primary model and, if one is attached, the shadow."""

    spec: ThresholdPolicy | None
    primary: Policy
    shadow: Policy | None = None

    @property
    def version(self) -> str:
        return self.primary.version


class PolicyHolder:
    """The one reference to the policies in force; `swap` replaces it whole."""

    def __init__(
        self,
        primary: ArtifactContract,
        spec: ThresholdPolicy | None = None,
        *,
        shadow: ArtifactContract | None = None,
        source: TenantSource | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._primary, self._shadow = primary, shadow
        self._source = source or TenantSource()
        self._metrics = metrics
        self.current = self._build(spec)
        self._publish_info()

    @property
    def labels(self) -> tuple[str, ...]:
        return self._primary.labels

    def _build(self, spec: ThresholdPolicy | None) -> Policies:
        return Policies(
            spec,
            Policy.build(self._primary, spec, self._source),
            None if self._shadow is None else Policy.build(self._shadow, spec, self._source),
        )

    def swap(self, spec: ThresholdPolicy | None) -> None:
        """Put `spec` in force (already validated against the labels)."""
        self.current = self._build(spec)
        self._publish_info()

    def _publish_info(self) -> None:
        if self._metrics is not None:
            self._metrics.policy_info.info({"version": self.current.version})


@dataclass(frozen=True)
class _Seen:
    """What the watcher last saw of the file: the target it resolves to, and its stat."""

    target: str
    inode: int
    size: int
    mtime_ns: int


class PolicyWatcher(Feature):
    """Polls the policy file every `interval_s`; reloads on a content change (see the module)."""

    name = "policy"

    def __init__(
        self, path: Path, holder: PolicyHolder, metrics: Metrics, interval_s: float
    ) -> None:
        self._path = path
        self._holder = holder
        self._metrics = metrics
        self._interval_s = interval_s
        self._seen = self._stat()
        self._digest = self._hash(self._read()) if self._seen else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = side_task(self.run(), self.name)

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task, 1.0)  # it waits on `_stop`: it ends at once

    async def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stop.wait()
            if not self._stop.is_set():
                self.check()

    def _stat(self) -> _Seen | None:
        try:
            stat = os.stat(self._path)  # follows symlinks: the file now behind the name
            target = os.path.realpath(self._path)
        except OSError:
            return None
        return _Seen(target, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _read(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except OSError:
            return None

    @staticmethod
    def _hash(data: bytes | None) -> str | None:
        return None if data is None else hashlib.sha256(data).hexdigest()

    def check(self) -> bool:
        """One poll: reload if the file changed; True if a new policy was put in force."""
        seen = self._stat()
        if seen == self._seen:
            return False
        self._seen = seen
        data = self._read() if seen is not None else None
        digest = self._hash(data)
        if digest == self._digest:
            return False  # touched, or the same content behind a new symlink
        self._digest = digest
        if data is None:
            self._reject(f"policy file {self._path}: cannot read it (missing?)")
            return False
        try:
            spec = parse_policy(data, str(self._path), self._holder.labels)
        except PolicyError as exc:
            self._reject(str(exc))
            return False
        previous = self._holder.current.version
        self._holder.swap(spec)
        self._metrics.policy_reloads.inc()
        log.info("policy reloaded: version %s (was %s)", spec.version, previous)
        return True

    def _reject(self, why: str) -> None:
        self._metrics.policy_reload_failures.inc()
        log.error(
            "policy reload rejected, version %s stays in force: %s",
            self._holder.current.version,
            why,
        )
