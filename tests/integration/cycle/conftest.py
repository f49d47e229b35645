"""The rightsizing cycle's stack: Prometheus (backfilled) behind a token proxy, a Ray head with Jobs API.

The Ray head is started as ``mora stack up`` starts it (``infra.local.ray_head.RayHead``) with
``MORA_HOME`` pointing at a home whose ``stack.env`` holds the S3 key pair *and* the Prometheus URL and
bearer token: a job submitted to it gets no credential from its submitter. Prometheus is Debian's,
over a TSDB backfilled with ``promtool``; it is restarted (by PID) to pick up the second backfill.
Every process is stopped by its PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cycle_harness import (
    BACKFILL_DAYS,
    RATE_WINDOW,
    STEP,
    Timeline,
    TokenProxy,
    services,
    token_proxy,
    write_backfills,
)

from infra.local.envfile import stack_env_path, update_env_file
from infra.local.prometheus import PrometheusServer, backfill_openmetrics
from infra.local.ray_head import RayHead, RayPorts
from mora_platform.settings import MoraSettings

NAMESPACE = "shop"


@dataclass
class CycleStack:
    root: Path
    home: Path
    head: RayHead
    settings: MoraSettings  # the submitter's view: S3 + the head's Jobs API
    prometheus: PrometheusServer
    proxy: TokenProxy
    token: str
    timeline: Timeline
    prefix: str
    second_backfill: Path

    @property
    def services(self) -> tuple[str, str]:
        api, db = services(self.prefix)
        return api.name, db.name

    def backfill_second_window(self) -> float:
        """Stop Prometheus, backfill the second window into its TSDB, start it again; seconds taken."""
        began = time.monotonic()
        tsdb, port = self.prometheus.tsdb_dir, self.prometheus.port
        self.prometheus.stop()
        backfill_openmetrics(self.second_backfill, tsdb)
        try:
            self.prometheus = PrometheusServer(tsdb, port=port).start()
        except Exception:  # the port was taken meanwhile: another one, the proxy follows
            self.prometheus = PrometheusServer(tsdb).start()
        self.proxy.retarget(self.prometheus.url)
        return time.monotonic() - began


@pytest.fixture(scope="module")
def cycle_stack(s3_settings: MoraSettings) -> Iterator[CycleStack]:
    root = Path(tempfile.mkdtemp(prefix="mora-cycle-", dir="/tmp"))
    prefix = f"cyc{secrets.token_hex(3)}"
    now = int(time.time()) // 300 * 300
    boundary = now - 4 * 3600
    timeline = Timeline(start=boundary - BACKFILL_DAYS * 86_400, boundary=boundary, end=now - 3600)
    first, second = root / "first.om", root / "second.om"
    write_backfills(first, second, timeline, NAMESPACE, prefix)
    backfill_openmetrics(first, root / "tsdb")
    prometheus = PrometheusServer(root / "tsdb").start()
    token = secrets.token_hex(16)
    home = root / "home"
    key, secret = s3_settings.s3_credentials()
    head: RayHead | None = None
    try:
        # As in the fleet tests: the throw-away head runs without Ray's token auth, and so do its clients.
        with pytest.MonkeyPatch.context() as patch, token_proxy(prometheus.url, token) as proxy:
            patch.setenv("RAY_AUTH_MODE", "disabled")
            update_env_file(
                stack_env_path(home),
                {
                    "MORA_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
                    "MORA_S3_BUCKET": s3_settings.s3_bucket,
                    "MORA_S3_ACCESS_KEY": key or "",
                    "MORA_S3_SECRET_KEY": secret or "",
                    "MORA_PROMETHEUS_URL": proxy.url,
                    "MORA_PROMETHEUS_BEARER_TOKEN": token,
                    "MORA_PROMETHEUS_STEP": STEP,
                    "MORA_PROMETHEUS_RATE_WINDOW": RATE_WINDOW,
                },
            )
            # the stack's manifest signing key, as `mora stack up` keeps it: the session's key, so the head's
            # jobs, a `--local` run reading this home and the test's own readers all agree
            (home / "signing_key").write_text(os.environ["MORA_SIGNING_KEY"] + "\n")
            (home / "signing_key").chmod(0o600)
            head = RayHead(
                RayPorts.free(),
                root / "ray.log",
                temp_dir=root / "ray",
                num_cpus=2,
                extra_env={"MORA_HOME": str(home)},
            )
            head.start(timeout=120)
            settings = s3_settings.model_copy(
                update={"ray_dashboard_url": head.dashboard_url, "ray_address": head.address}
            )
            stack = CycleStack(root, home, head, settings, prometheus, proxy, token, timeline, prefix, second)
            yield stack
            prometheus = stack.prometheus
    finally:
        if head is not None:
            head.stop(timeout=30)
        prometheus.stop()
        shutil.rmtree(root, ignore_errors=True)
