"""`gateway check`'s look at the machine: what `gateway run` would refuse that no parser can see.

Settings already refuse a data and an admin listener that overlap (env.py `_listener_clash`). This
adds what only the machine can tell:

- a log file (GATEWAY_ACCESS_LOG, GATEWAY_AUDIT_LOG) that could not be opened for appending: the
  file is not writable, or it does not exist and its directory cannot take it (nothing is created);

- each host resolves, the way its listener resolves it (the data listener binds one address of the
  family its spelling implies, worker.bind_listener; the admin listener every address
  getaddrinfo(AI_PASSIVE) gives, admin.server._bind), and every such address is one of this
  machine's: a bind to it on port 0 succeeds (8.8.8.8 gives EADDRNOTAVAIL);
- with `--bind-test`, each port can be bound now (EADDRINUSE: another program or gateway holds it;
  EACCES: a port below 1024 without the privilege). The sockets are closed at once.

Each problem is one line naming the variable to change, as every configuration error is.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Settings

Address = tuple[int, tuple]     # (family, sockaddr)


def _data_addresses(host: str) -> list[Address]:
    # worker.bind_listener: AF_INET6 when the host is spelled with ':', else AF_INET (a name then
    # resolves to its IPv4 address).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    return [(family, infos[0][4])]


def _admin_addresses(host: str) -> list[Address]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: list[Address] = []
    for family, _, _, _, addr in infos:
        if (family, addr) not in seen:
            seen.append((family, addr))
    return seen


def _bind(family: int, addr: tuple, port: int, *, reuse_port: bool = False) -> None:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr[0], port, *addr[2:]))
        s.listen(1)
    finally:
        s.close()


def _shown(family: int, addr: tuple, port: int | None = None) -> str:
    ip = f"[{addr[0]}]" if family == socket.AF_INET6 else addr[0]
    return ip if port is None else f"{ip}:{port}"


def log_file_problems(settings: Settings) -> list[str]:
    """One line per log destination that is a path `run` could not open for appending."""
    problems = []
    for var, dest in (("GATEWAY_ACCESS_LOG", settings.access_log), ("GATEWAY_AUDIT_LOG", settings.audit_log)):
        if dest in ("off", "stdout", "stderr"):
            continue
        reason: str | None
        if os.path.isdir(dest):
            reason = "Is a directory"
        elif os.path.exists(dest):
            reason = None if os.access(dest, os.W_OK) else "Permission denied"
        else:
            parent = os.path.dirname(os.path.abspath(dest))
            if not os.path.isdir(parent):
                reason = "No such file or directory"
            else:
                reason = None if os.access(parent, os.W_OK | os.X_OK) else "Permission denied"
        if reason:
            problems.append(f"{var}: cannot open {dest!r} for appending: {reason}")
    return problems


def listener_problems(settings: Settings, *, bind_test: bool = False) -> list[str]:
    """One line per problem of the data and admin listeners ([] when `run` could listen)."""
    problems: list[str] = []
    listeners = (
        ("GATEWAY_HOST", "GATEWAY_PORT", settings.host, settings.port, _data_addresses, settings.reuse_port),
        ("GATEWAY_ADMIN_HOST", "GATEWAY_ADMIN_PORT", settings.admin_host, settings.admin_port, _admin_addresses,
         False),
    )
    for host_var, port_var, host, port, resolve, shared in listeners:
        try:
            addresses = resolve(host)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
            problems.append(f"{host_var}: {host!r} does not resolve ({reason}): set it to an IP address of "
                            f"this machine or a name that resolves to one")
            continue
        for family, addr in addresses:
            try:
                _bind(family, addr, 0)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    what = "is not an address of this machine" if addr[0] == host else \
                        f"resolves to {_shown(family, addr)}, not an address of this machine"
                    problems.append(f"{host_var}: {host!r} {what}: set it to one of its addresses "
                                    f"(0.0.0.0 or :: for all)")
                else:
                    problems.append(f"{host_var}: cannot listen on {_shown(family, addr)}: "
                                    f"{exc.strerror or exc}")
                break
            if not bind_test:
                continue
            try:
                _bind(family, addr, port, reuse_port=shared)
            except OSError as exc:
                where = _shown(family, addr, port)
                if exc.errno == errno.EADDRINUSE:
                    problems.append(f"{port_var}: {where} is already in use (by another program or gateway): "
                                    f"set {port_var} to a free port, or stop what holds it")
                elif exc.errno == errno.EACCES:
                    problems.append(f"{port_var}: cannot listen on {where}: permission denied (ports below 1024 "
                                    f"need root or CAP_NET_BIND_SERVICE): set {port_var} to 1024 or above")
                else:
                    problems.append(f"{port_var}: cannot listen on {where}: {exc.strerror or exc}")
                break
    return problems
