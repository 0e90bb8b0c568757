"""Stopping a child process (a broker, a Prometheus) the way every helper does."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM; SIGKILL if it has not exited after `timeout` seconds. The exit code (a process
    that has exited already is left as it is)."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout)
