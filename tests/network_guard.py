"""A socket guard for tests of a machine without network: every lookup and connection fails at once, and counts.

Counting the attempts (instead of timing the call) is what shows that nothing retries: a retry loop makes one
attempt per try, however fast each one fails.
"""

import errno
import socket

import pytest


def refuse_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every DNS lookup and connection fail at once; return the list that records each attempt by name."""
    attempts: list[str] = []

    def refusing(name: str):
        def refuse(*args, **kwargs):
            attempts.append(name)
            raise OSError(errno.ENETUNREACH, f"network is unreachable (test socket guard: {name})")

        return refuse

    for owner, name in (
        (socket, "getaddrinfo"),
        (socket, "create_connection"),
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
    ):
        monkeypatch.setattr(owner, name, refusing(name))
    return attempts
