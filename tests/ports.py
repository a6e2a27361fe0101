"""Ports on 127.0.0.1 for the services tests start themselves (moto, torchrun, Ray)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on: bound to learn it, closed again on return. A service started
    on it next gets it; a client dialling it meets a closed port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
