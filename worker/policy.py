"""Threshold policies in force: loaded at start, re-read when the file changes, swapped whole.

`Policy` is what one model's outputs follow: thresholds in label order, by default and per tenant,
and the version written as `policy_version`. `PolicyHolder.current` is one immutable reference
(`Policies`: the primary's and the shadow's), read once per batch, so a reload takes effect
between batches and never inside one. `PolicyWatcher` polls the file: a change of the file it
resolves to (a Kubernetes ConfigMap swaps its `..data` symlink; `os.stat` follows it) or of its
size or modification time makes it read the file, and a different content hash reloads it. A
file that fails to read, parse or validate, whatever the exception, is rejected with one log line
and `moderation_policy_reload_failures_total`; the policy in force stays and the watcher goes on.

Nothing proportional to the file runs on the event loop: the watcher stats, reads, hashes and
parses on a thread, and only the swap of the validated result runs on the loop. A read takes
regular files only (the name's symlinks resolved; a FIFO or a device is refused, opened
non-blocking so a FIFO cannot hang the open) and at most `MODERATION_POLICY_MAX_BYTES`.
Error messages name a position (line, column), never the file's content: a policy path that
points at a secret must not log a line of it.

Policy files are JSON (`.json`) or YAML (any other name; pyyaml is a runtime dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from pydantic import ValidationError

from schemas import MODEL_POLICY_VERSION, ArtifactContract, ThresholdPolicy, UnsupportedLanguage
from worker.lifecycle import Feature, cancel_and_wait, side_task
from worker.metrics import Metrics
from worker.pipeline.records import InFlight

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1_048_576  # MODERATION_POLICY_MAX_BYTES's default


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
    model's `labels`; `PolicyError` (one line, no content of the file) if it is not a valid
    policy for this model, whatever failed while reading it."""
    try:
        raw = _load(data, name)
    except PolicyError:
        raise
    except Exception as exc:  # a file must never end the watcher
        raise PolicyError(
            f"policy file {name}: not valid {_format(name)}: cannot build the document "
            f"({type(exc).__name__})"
        ) from None
    try:
        policy = ThresholdPolicy.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(_shown(part) for part in error["loc"]) or "the document"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PolicyError(f"policy file {name}: {where}: {error['msg']}{more}") from None
    except Exception as exc:  # e.g. RecursionError on a deeply nested value
        raise PolicyError(
            f"policy file {name}: not a valid policy ({type(exc).__name__})"
        ) from None
    unknown = policy.unknown_labels(labels)
    if unknown:
        named = ", ".join(repr(_shown(label)) for label in unknown)
        raise PolicyError(
            f"policy file {name} (version {policy.version}): the model has no label "
            f"{named} (its labels: {', '.join(labels)})"
        )
    return policy


def _load(data: bytes, name: str) -> Any:
    """The document in `data`; `PolicyError` naming where a syntax error is, never what."""
    if name.endswith(".json"):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(
                f"policy file {name}: not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
    try:
        return yaml.load(data, Loader=_TextLoader)  # a SafeLoader
    except RecursionError:
        raise PolicyError(f"policy file {name}: not valid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        # str(exc) quotes the offending line: say what and where only
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = " ".join(f"{exc.context or ''} {exc.problem or ''}".split()) or "syntax error"
        what = _shown(what, 200)
        raise PolicyError(f"policy file {name}: not valid YAML: {what}{where}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {name}: not valid YAML ({type(exc).__name__})") from None


def _shown(part: object, limit: int = 64) -> str:
    """A key of the file as an error message shows it: escaped, cut at `limit` characters."""
    text = part if isinstance(part, str) else str(part)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _format(name: str) -> str:
    return "JSON" if name.endswith(".json") else "YAML"


def read_policy_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the regular file `path` names (its symlinks resolved), at most `max_bytes`;
    `PolicyError` (one line) for anything else: missing, a FIFO, a device, a directory, larger.
    Opened non-blocking, so a FIFO with no writer cannot hang the open; never reads more than
    `max_bytes + 1` bytes, so /dev/zero-like files cannot read forever."""
    try:
        before = os.stat(path)  # a device is refused before it is opened (opening may act)
        if not stat.S_ISREG(before.st_mode):
            raise PolicyError(f"policy file {path}: not a regular file ({_file_type(before)})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError(f"policy file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"policy file {path}: not a regular file ({_file_type(info)})")
        if info.st_size > max_bytes:
            raise PolicyError(
                f"policy file {path}: {info.st_size} bytes, over the limit of {max_bytes} "
                "(MODERATION_POLICY_MAX_BYTES)"
            )
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew since the fstat
            raise PolicyError(
                f"policy file {path}: over the limit of {max_bytes} bytes "
                "(MODERATION_POLICY_MAX_BYTES)"
            )
        return b"".join(chunks)
    except OSError as exc:
        raise PolicyError(f"policy file {path}: cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _file_type(info: os.stat_result) -> str:
    mode = info.st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def load_policy_file(
    path: Path, labels: tuple[str, ...], max_bytes: int = DEFAULT_MAX_BYTES
) -> ThresholdPolicy:
    """`parse_policy` of the file at `path`; `PolicyError` if it cannot be read (see
    `read_policy_bytes`)."""
    return parse_policy(read_policy_bytes(path, max_bytes), str(path), labels)


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
    spec: ThresholdPolicy | None = None  # the file's policy (None: the model's thresholds)

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
            spec=spec,
        )

    def language_mode(
        self, tenant: str | None, front_door_default: UnsupportedLanguage
    ) -> UnsupportedLanguage:
        """What to do with `tenant`'s text in a language the model does not serve: the tenant's
        mode, else the policy's, else the front door's default."""
        mode = self.spec.language_mode(tenant) if self.spec is not None else None
        return mode if mode is not None else front_door_default

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
        self._listeners: list[Callable[[Policies], None]] = []
        self.current = self.build(spec)
        self._publish_info()

    @property
    def labels(self) -> tuple[str, ...]:
        return self._primary.labels

    def build(self, spec: ThresholdPolicy | None) -> Policies:
        """The policies `spec` makes for the models (pure: safe on a thread)."""
        return Policies(
            spec,
            Policy.build(self._primary, spec, self._source),
            None if self._shadow is None else Policy.build(self._shadow, spec, self._source),
        )

    def swap(self, spec: ThresholdPolicy | None, built: Policies | None = None) -> None:
        """Put `spec` in force (already validated against the labels); `built`: its
        `build(spec)`, made beforehand (off the loop)."""
        self.current = built if built is not None else self.build(spec)
        self._publish_info()
        for listener in self._listeners:
            listener(self.current)

    def subscribe(self, listener: Callable[[Policies], None]) -> None:
        """Call `listener` (on the loop) with the policies each time a new one is in force."""
        self._listeners.append(listener)

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


@dataclass(frozen=True)
class _Poll:
    """What one poll found, worked out off the loop: what it saw, and what to do."""

    seen: _Seen | None
    digest: str | None
    spec: ThresholdPolicy | None = None  # a new valid policy to put in force
    built: Policies | None = None  # its thresholds per tenant, built off the loop
    error: str | None = None  # why the changed file is rejected


class PolicyWatcher(Feature):
    """Polls the policy file every `interval_s`; reloads on a content change (see the module).

    `run` does the stat, read, hash and parse of each poll on a thread (`poll`) and only the
    swap on the loop (`apply`); `check` is both, in the caller's thread."""

    name = "policy"

    def __init__(
        self,
        path: Path,
        holder: PolicyHolder,
        metrics: Metrics,
        interval_s: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._path = path
        self._holder = holder
        self._metrics = metrics
        self._interval_s = interval_s
        self._max_bytes = max_bytes
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
            if self._stop.is_set():
                break
            try:
                found = await asyncio.to_thread(self.poll)
            except Exception as exc:  # the watcher outlives any file
                self._reject(f"policy file {self._path}: cannot check it ({type(exc).__name__})")
                continue
            if not self._stop.is_set():
                self.apply(found)

    def _stat(self) -> _Seen | None:
        try:
            info = os.stat(self._path)  # follows symlinks: the file now behind the name
            target = os.path.realpath(self._path)
        except (OSError, ValueError):
            return None
        return _Seen(target, info.st_ino, info.st_size, info.st_mtime_ns)

    def _read(self) -> bytes | None:
        try:
            return read_policy_bytes(self._path, self._max_bytes)
        except PolicyError:
            return None

    @staticmethod
    def _hash(data: bytes | None) -> str | None:
        return None if data is None else hashlib.sha256(data).hexdigest()

    def check(self) -> bool:
        """One poll: reload if the file changed; True if a new policy was put in force."""
        return self.apply(self.poll())

    def poll(self) -> _Poll | None:
        """Stat, and where the file changed read, hash and parse it (no state changes here:
        safe on a thread); None when nothing changed."""
        seen = self._stat()
        if seen == self._seen:
            return None
        try:
            data = read_policy_bytes(self._path, self._max_bytes) if seen is not None else None
        except PolicyError as exc:
            # refused unread (too large, not a regular file): keyed on what was seen
            return _Poll(seen, f"unread:{seen}", error=str(exc))
        digest = self._hash(data)
        if digest == self._digest:
            return _Poll(seen, digest)  # touched, or the same content behind a new symlink
        if data is None:
            return _Poll(seen, digest, error=f"policy file {self._path}: cannot read it (missing?)")
        try:
            spec = parse_policy(data, str(self._path), self._holder.labels)
        except PolicyError as exc:
            return _Poll(seen, digest, error=str(exc))
        except Exception as exc:  # parse_policy wraps all it knows of
            return _Poll(seen, digest, error=f"policy file {self._path}: {type(exc).__name__}")
        return _Poll(seen, digest, spec=spec, built=self._holder.build(spec))

    def apply(self, found: _Poll | None) -> bool:
        """Put what `poll` found in force (on the loop); True if a new policy was."""
        if found is None:
            return False
        self._seen = found.seen
        if found.digest == self._digest:
            return False
        self._digest = found.digest
        if found.error is not None or found.spec is None:
            self._reject(found.error or f"policy file {self._path}: cannot read it")
            return False
        previous = self._holder.current.version
        self._holder.swap(found.spec, found.built)
        self._metrics.policy_reloads.inc()
        log.info("policy reloaded: version %s (was %s)", found.spec.version, previous)
        return True

    def _reject(self, why: str) -> None:
        self._metrics.policy_reload_failures.inc()
        log.error(
            "policy reload rejected, version %s stays in force: %s",
            self._holder.current.version,
            why,
        )
