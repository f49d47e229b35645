"""Which addresses the local stack's processes listen on (read from the OS with psutil, never probed).

``listening_sockets(pids)`` lists the TCP/UDP sockets in LISTEN state (and bound UDP sockets) of
the given processes; ``beyond_loopback`` keeps those another host could reach: bound to a
wildcard (0.0.0.0, ::) or to a non-loopback address. Used by ``mora stack status`` and the tests.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, order=True)
class ListeningSocket:
    """One listening socket: address, port, protocol and the process that holds it."""

    port: int
    address: str
    protocol: str
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        """Only reachable from this machine (127.0.0.0/8, ::1, ::ffff:127.x)."""
        return is_loopback(self.address)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol} ({self.process}, pid {self.pid})"


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback address (a wildcard or any other address is not)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listening_sockets(pids: Iterable[int]) -> list[ListeningSocket]:
    """Listening TCP sockets and bound UDP sockets of the processes ``pids`` (sorted by port)."""
    wanted = set(pids)
    names: dict[int, str] = {}
    found: set[ListeningSocket] = set()
    for pid in wanted:
        try:
            process = psutil.Process(pid)
            names[pid] = process.name()
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            if not conn.laddr:
                continue
            tcp = conn.type == socket.SOCK_STREAM
            if tcp and conn.status != psutil.CONN_LISTEN:
                continue
            if not tcp and conn.raddr:
                continue  # a connected UDP socket is a client
            found.add(
                ListeningSocket(
                    port=conn.laddr.port,
                    address=conn.laddr.ip,
                    protocol="tcp" if tcp else "udp",
                    pid=pid,
                    process=names[pid],
                )
            )
    return sorted(found)


def beyond_loopback(sockets: Iterable[ListeningSocket]) -> list[ListeningSocket]:
    """The sockets another host could reach (wildcard or non-loopback address)."""
    return [item for item in sockets if not item.loopback]
