"""A tiny HTTP GET for tests (stdlib only), and reading a Prometheus text exposition."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: str


def http_get(url: str, timeout: float = 5.0) -> HttpResult:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return HttpResult(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read().decode())


def metric_sum(body: str, name: str) -> float:
    """Sum of all samples of `name` (any labels) in a Prometheus text exposition."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + " ", name + "{"))
    )
