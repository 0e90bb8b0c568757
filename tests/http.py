"""A tiny HTTP GET for tests (stdlib only): status and body, also for 4xx/5xx answers."""

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
