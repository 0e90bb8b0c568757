"""Loopback ports: a free one to listen on, and waiting until something listens."""

from __future__ import annotations

import contextlib
import socket

from testing.wait import wait_until


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(host: str, port: int) -> bool:
    """Whether `host:port` accepts a connection now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Return once `host:port` accepts a connection; TimeoutError after `timeout` seconds."""
    wait_until(lambda: accepts(host, port), timeout, message=f"nothing listens on {host}:{port}")
