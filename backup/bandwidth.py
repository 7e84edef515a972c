"""One bandwidth budget per destination host, shared by every worker and every workflow.

``sftp.rate_limit_mbps`` is what operators gave this platform on a backup server: four workers
uploading at once must share it, not take four times it.  The budget is a GCRA token bucket
(generic cell rate algorithm) kept in one Redis key per ``host:port``: the key holds the
*theoretical arrival time* (TAT), the moment the link would be free again at the allowed rate.
Taking ``n`` bytes reserves the slot ``[max(TAT, now - burst), + n/rate)`` atomically (one Lua
script, Redis's own clock) and returns how long to wait before sending them.  No central process:
every uploader takes its own chunks.

Invariants and costs:
- Over any interval of length ``T`` the bytes sent to one host stay below ``rate * (T + BURST)``
  plus one chunk per uploader, whatever the number of uploaders, processes or machines.
- Reservations are served in the order they reach Redis, and each uploader holds at most one at
  a time (it asks for the next chunk only after sending the previous one): concurrent uploads
  share the budget round-robin, none starves.
- One Redis round trip per chunk; chunks are about 1/20 s of the limit (4 KiB..256 KiB), so an
  80 MB/s budget costs ~300 round trips a second across all uploaders.
- Redis's clock (``TIME``), not the workers', orders the reservations: workers on machines with
  skewed clocks still share one timeline.  The key expires a minute after the last reservation.
"""

from __future__ import annotations

import time

import redis

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local start = math.max(tat, now - tonumber(ARGV[3]))
local free = start + tonumber(ARGV[1]) / tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.6f', free), 'PX', math.ceil((free - now) * 1000) + 60000)
return string.format('%.6f', math.max(0, start - now))
"""


class SharedBudget:
    """Bytes per second to one destination, shared through Redis; call it with a byte count before sending them."""

    #: Seconds of budget a sender may make up when it comes late (its sleep overshot, the machine was busy):
    #: without it every late wake-up is budget lost for good (0.05 s gave 0.8x the limit on a loaded
    #: 2-core machine).  It is also what a link idle for a while may spend at once; a first take starts
    #: with no credit.
    BURST = 0.25

    def __init__(self, client: redis.Redis, key_prefix: str, destination: str, rate_mbps: float) -> None:
        if rate_mbps <= 0:
            raise ValueError("a bandwidth budget needs a positive rate")
        self.rate = rate_mbps * 1e6
        self.destination = destination
        self._key = f"{key_prefix}:bandwidth:{destination}"
        self._take = client.register_script(_TAKE)

    def reserve(self, n: int) -> float:
        """Reserve ``n`` bytes; the seconds to wait before sending them (0 when the link has room now)."""
        return float(self._take(keys=[self._key], args=[n, self.rate, self.BURST]))

    def __call__(self, n: int) -> None:
        """Reserve ``n`` bytes and sleep until they may be sent."""
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)
