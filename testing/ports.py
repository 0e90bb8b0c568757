"""Loopback ports: a free one to listen on, and waiting until something listens."""

from __future__ import annotations

from worker.ops.dev_broker import free_port, wait_for_port

__all__ = ["free_port", "wait_for_port"]
