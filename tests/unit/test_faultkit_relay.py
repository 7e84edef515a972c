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


@pytest.mark.parametrize("sentinel", [False, True])
def test_the_relay_port_is_past_every_port_of_the_campaigns_redis(tmp_path, sentinel):
    """A Sentinel group takes five ports: a relay on the first one + 1 collided with its replica
    ('Address already in use' when the sentinel campaign set up). Nothing is started here."""
    from bench.faults import Campaign

    campaign = Campaign({}, tmp_path, 26650, sentinel=sentinel)
    assert len(campaign.redis.ports) == (5 if sentinel else 1)
    assert campaign.relay_port() not in campaign.redis.ports
    assert campaign.relay_port() > max(campaign.redis.ports)
