"""The two systemd protocols the daemon speaks, without libsystemd: socket activation and readiness.

- :func:`listen_fds` takes the listening sockets systemd passes (sd_listen_fds(3): fds from 3 on,
  ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``), so an ``onion-gateway.socket`` unit keeps the
  sockets -- and the connections queued on them -- while the service restarts.
- :func:`match_listeners` gives each passed socket to the configured listener with the same bound
  address (``127.0.0.1:10025``, ``[::1]:10025``, ``unix:/run/onion-gateway/map.sock``); a
  ``.socket`` unit gives all its sockets one FileDescriptorName, so names are only logged, never matched.
- :func:`notify` sends sd_notify(3) states (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to
  ``NOTIFY_SOCKET`` when it is set (``Type=notify``); without it, it does nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Sequence

from onion_gateway.config import ListenAddress
from onion_gateway.errors import ConfigError

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3     # sd_listen_fds(3): the first passed file descriptor


def listen_fds(unset_environment: bool = True) -> list[tuple[socket.socket, str]]:
    """The listening sockets passed by systemd (or systemd-socket-activate), per sd_listen_fds(3).

    :param unset_environment: remove ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` from the
        environment afterwards, so child processes do not take them too.
    :returns: ``[(socket, name)]`` in fd order; empty when ``LISTEN_PID`` is not this process or
        ``LISTEN_FDS`` is unset. Each fd gets close-on-exec.
    :raises ConfigError: if ``LISTEN_FDS`` is not a number.
    """
    pid, count, names = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_FDNAMES")
    if unset_environment:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    if pid is None or count is None or pid.strip() != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        raise ConfigError(f"LISTEN_FDS={count!r} is not a number") from None
    labels = names.split(":") if names else []
    passed = []
    for index in range(n):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        passed.append((sock, labels[index] if index < len(labels) else "unknown"))
    return passed


def bound_address(sock: socket.socket) -> ListenAddress:
    """The :class:`ListenAddress` a socket is bound to (its ``getsockname()``)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return ListenAddress(path=name if isinstance(name, str) else name.decode(errors="replace"))
    return ListenAddress(host=name[0], port=name[1])


def _same(configured: ListenAddress, bound: ListenAddress) -> bool:
    if configured.is_unix or bound.is_unix:
        return bool(configured.path and bound.path and os.path.realpath(configured.path) == os.path.realpath(bound.path))
    if configured.port != bound.port:
        return False
    try:
        return ipaddress.ip_address(configured.host or "") == ipaddress.ip_address(bound.host or "")
    except ValueError:
        return configured.host == bound.host


def match_listeners(wanted: Sequence[ListenAddress],
                    passed: Sequence[tuple[socket.socket, str]]) -> dict[int, socket.socket]:
    """Give each passed socket to the configured listener bound to the same address.

    :param wanted: the configured listener addresses, in order.
    :param passed: what :func:`listen_fds` returned.
    :returns: ``{index in wanted: socket}``; configured listeners without a passed socket are missing
        (the daemon binds them itself).
    :raises ConfigError: if a passed socket matches no configured listener, or is not a listening
        stream socket (the message names its address and FileDescriptorName).
    """
    taken: dict[int, socket.socket] = {}
    for sock, name in passed:
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError(f"socket activation: passed fd {sock.fileno()} ({name}) is not a stream socket")
        address = bound_address(sock)
        for index, configured in enumerate(wanted):
            if index not in taken and _same(configured, address):
                taken[index] = sock
                log.info("using the socket passed by systemd for %s (FileDescriptorName=%s)", configured, name)
                break
        else:
            raise ConfigError(f"socket activation: the passed socket {address} ({name}) matches no configured "
                              "listener (tcp_table, socketmap)")
    return taken


def notify(state: str) -> bool:
    """Send an sd_notify(3) *state* (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."``) to systemd.

    :returns: True if sent; False when ``NOTIFY_SOCKET`` is unset or the send failed (logged at debug:
        notification is best effort, as in libsystemd).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", state, exc)
        return False
    return True
