"""The fault campaign's relay (bench/faultkit.py): an outage can end even when nothing connected during it."""

from __future__ import annotations

import socket

import pytest

from bench.faultkit import Relay


def test_a_closed_relay_refuses_and_reopens_on_its_port_with_no_connection_during_the_outage():
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    relay = Relay(upstream.getsockname()[1])
    try:
        relay.open()
        relay.close()  # the accept thread is still blocked in accept(): the socket must stop listening anyway
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", relay.port), timeout=2)
        relay.open()  # EADDRINUSE when the closed listener lingered
        with socket.create_connection(("127.0.0.1", relay.port), timeout=2):
            pass
    finally:
        relay.close()
        upstream.close()
