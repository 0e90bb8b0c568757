"""A tiny HTTP GET and POST (stdlib only), and reading a Prometheus text exposition."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: str


def http_get(url: str, timeout: float = 5.0) -> HttpResult:
    """GET `url`; an HTTP error status is a result, not an exception (OSError when nothing
    answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return HttpResult(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read().decode())


def http_post(
    url: str, body: bytes, content_type: str | None = "application/json", timeout: float = 30.0
) -> HttpResult:
    """POST `body` to `url`; an HTTP error status is a result, not an exception."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read().decode())


def metric_sample(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in body.splitlines():
        if not line.startswith((name + " ", name + "{")):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


def metric_sum(body: str, name: str) -> float:
    """Sum of all samples of `name` (any labels) in a Prometheus text exposition."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def metric_values(body: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition as {name: sum over its label sets}, except
    that histogram buckets keep their bound and start-up times their phase:
    `name_bucket{le=0.005}`, `moderation_startup_seconds{phase=warm_up}`."""
    values: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        for label in ("le", "phase"):
            if f'{label}="' in name_part:
                kept = name_part.split(f'{label}="', 1)[1].split('"', 1)[0]
                name = f"{name}{{{label}={kept}}}"
        values[name] = values.get(name, 0.0) + float(value)
    return values
