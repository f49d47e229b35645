"""A throwaway local Prometheus (Debian's ``prometheus`` + ``promtool``) for tests and demos.

``backfill_openmetrics`` turns an OpenMetrics file into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics``; ``PrometheusServer`` then serves that TSDB on
a free 127.0.0.1 port with no scrape jobs (so the head stays empty and the backfilled blocks
are all there is) and a retention long enough that nothing backfilled is dropped. It is
stopped by its PID.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

# Backfilled blocks can lie anywhere in the past: keep them all.
DEFAULT_RETENTION = "36500d"


class PrometheusBinaryError(RuntimeError):
    """prometheus / promtool missing or failing."""


def find_binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool`` on PATH, with an install hint if missing."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusBinaryError(
            f"{name!r} not found on PATH; install Debian's prometheus package "
            "(make system-deps, or: apt-get install -y --no-install-recommends prometheus)"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backfill_openmetrics(openmetrics_file: Path, tsdb_dir: Path, *, timeout: float = 120.0) -> str:
    """Write TSDB blocks for ``openmetrics_file`` into ``tsdb_dir``; returns promtool's output.

    The file must end with ``# EOF`` and carry sample timestamps in seconds. Run this before
    the server starts (a running server only picks up new blocks at its next reload).
    """
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [
            find_binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(openmetrics_file),
            str(tsdb_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise PrometheusBinaryError(
            f"promtool could not backfill {openmetrics_file}: {(completed.stderr or completed.stdout).strip()[-800:]}"
        )
    return completed.stdout


class PrometheusServer:
    """A Prometheus process on 127.0.0.1 over ``tsdb_dir`` (a temporary one if None)."""

    def __init__(
        self,
        tsdb_dir: Path | None = None,
        *,
        port: int | None = None,
        retention: str = DEFAULT_RETENTION,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._owned_dir: Path | None = None
        if tsdb_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="mora-prometheus-"))
            tsdb_dir = self._owned_dir / "tsdb"
        self.tsdb_dir = tsdb_dir
        self.port = port or free_port()
        self.retention = retention
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.tsdb_dir.parent / f"prometheus-{self.port}.log"

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server."""
        return self.process.pid if self.process else None

    def start(self, *, ready_timeout: float = 30.0) -> PrometheusServer:
        """Start the server and wait until ``/-/ready`` answers 200."""
        if self.process is not None:
            return self
        self.tsdb_dir.mkdir(parents=True, exist_ok=True)
        config = self.tsdb_dir.parent / f"prometheus-{self.port}.yml"
        config.write_text("global:\n  scrape_interval: 30s\nscrape_configs: []\n", encoding="utf-8")
        command = [
            find_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.tsdb_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            *self.extra_args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(ready_timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PrometheusBinaryError(
                    f"prometheus exited with code {self.process.returncode}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusBinaryError(
            f"prometheus not ready after {timeout:g}s on {self.url}: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-800:]
        except OSError:
            return "(no log)"

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM the server by PID, SIGKILL it after ``timeout``; remove a temporary TSDB."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
