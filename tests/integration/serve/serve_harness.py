"""Helpers shared by the Serve integration tests and their conftest (imported as ``serve_harness``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mora_platform.registry import ModelRegistry

# Small enough to train in seconds on 2 shared cores.
TINY_CONFIG: dict[str, Any] = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}
SOURCE_SERVICES = ("frontend", "cartservice")
RELOAD_INTERVAL_S = 1.0
DRILL_REPLICAS = 2  # replicas of each deployment of the endpoint under test (as deployed: serve.resilience)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM by PID, wait, then SIGKILL the process group it leads."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@dataclass(frozen=True)
class RayHead:
    address: str
    temp_dir: Path


@dataclass(frozen=True)
class Endpoint:
    url: str
    registry: ModelRegistry


def reset_ray_auth_state() -> None:
    """Make this process re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN from the environment.

    Ray caches its auth configuration when first used; another test in the same process may
    have imported Ray under different settings. Ray's own tests reset it the same way.
    """
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
