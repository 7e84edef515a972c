"""kombu's Redis transport with two fixes for a broker outage (selected by ``broker_transport`` in workers/app.py).

What happens in kombu 5.7 when Redis goes away under a worker (reproduced in
tests/integration/test_broker_outage.py):

1. The consumer's connection is dropped and its channel closed.  Closing a
   channel restores *every* unacknowledged message of that channel to its
   queue (``QoS.restore_unacked_once``, "Restoring N unacknowledged
   message(s)") - including the messages a pool child is still executing.
   After the reconnect the same message is delivered a second time while the
   first delivery is still running: the duplicate ``transfer`` that ran beside
   its own ``cleanup`` in the fault audit.
2. A channel outlives its connection: the late ack of the task that was
   running, a ``reject(requeue=True)`` of a child that died, or the restore of
   step 1 run after ``Connection.close()``/``collect()`` cleared
   ``transport.client``.  Those calls rebuild the channel's pool through
   ``Channel._connparams``, which reads ``self.connection.client.hostname`` and
   dies with ``AttributeError: 'NoneType' object has no attribute 'hostname'``
   - an error ``ignore_errors`` does not catch, so the worker's main process
   stops with "Unrecoverable error" (the same trace as celery/kombu#582).

The fixes, kept to the two methods involved:

* ``QoS.restore_unacked`` skips the delivery tags of requests the worker is
  executing right now (``celery.worker.state.active_requests``).  Their own
  ack removes them from the ``unacked`` hash when they finish; if the child
  dies, ``task_reject_on_worker_lost`` requeues them; if the whole worker
  dies, Redis' visibility timeout brings them back.  Reserved messages that
  have not started are restored as before (a warm shutdown stays prompt).
* ``Channel._connparams`` remembers the parameters of the last successful
  call and uses them once the connection object is gone, so a late ack,
  reject or restore opens a fresh Redis connection and completes.

* ``MultiChannelPoller.maybe_restore_messages`` first re-stamps, in the
  ``unacked_index`` sorted set, the time of every message this worker still
  holds (received, not yet acknowledged) and of every task it executes (after
  a reconnect those were delivered by a channel that is gone, and no channel
  holds their tags any more), then sweeps as kombu does.  The
  sweep restores messages whose stamp is older than the visibility timeout;
  a live worker's stamps are never older than one sweep period, so only the
  messages of a dead (or frozen) worker come back.  That is what lets the
  visibility timeout be minutes while phases run for hours: the worker's own
  event loop proves it is alive.

What bounds redelivery after a whole worker is killed: ``visibility_timeout``
after the last stamp, plus one sweep period of whichever worker sweeps next
(``unacked_restore_interval`` x ``unacked_restore_throttle``: kombu's default
10 x 10 s is why the audit measured about 1.7 x a 120 s timeout; the app sets
5 x 1 s), plus at most ``unacked_mutex_expire`` if the dead worker held the
sweep mutex (the app sets 30 s instead of 300 s).

With ``redis.url: sentinel://`` the same fixes ride on kombu's
``SentinelTransport`` (``SentinelTransport`` below): its channel asks the
sentinels for the primary each time it builds a pool, and that pool building
reads ``connection.client.alt`` (the sentinels' URLs) besides
``_connparams``, so the remembered parameters include the sentinels too.
The broker URL names one ``sentinel://`` URL per sentinel, and on a lost
connection kombu's ``Connection.switch`` moves to the next one and takes its
transport from that URL's scheme, not from ``broker_transport``: after the
first reconnect a worker ran kombu's stock transport and died at the next
outage with the AttributeError above (seen in the fault campaign's fourth
fail-over).  So importing this module makes the ``sentinel`` alias name
``SentinelTransport`` below, in every process that configures the app
(``register_sentinel_alias``).
The sweep and its stamps are plain Redis commands on the primary: a fail-over
that loses the newest stamps only makes a message look older, and a live
worker re-stamps it within one sweep period.

Cost: one set of delivery tags built per channel close; one ZADD of the held
tags per sweep period; nothing per message.
"""

from __future__ import annotations

import copy
import logging
import time

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def executing_delivery_tags() -> set:
    """Delivery tags of the requests this worker process is executing (empty outside a worker)."""
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover - celery is a hard dependency
        return set()
    tags = set()
    for request in list(state.active_requests):
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.add(tag)
    return tags


class QoS(kombu_redis.QoS):
    """Redis ack emulation that never requeues a message a pool child is still running."""

    def restore_unacked(self, client=None):
        executing = executing_delivery_tags()
        kept = [tag for tag in self._delivered if tag in executing]
        if kept:
            log.warning("connection closed with %d task(s) still running: left unacknowledged in the broker "
                        "(their own ack settles them; a dead worker's come back after the visibility timeout)",
                        len(kept))
        with self.channel.conn_or_acquire(client) as client:
            for tag in self._delivered:
                if tag not in executing:
                    self.restore_by_tag(tag, client=client)
        self._delivered.clear()


    def stamp_held(self, executing=()) -> int:
        """Re-stamp the messages this channel holds, and ``executing`` (the tags of the tasks this worker runs,
        whichever channel delivered them), as just delivered (ZADD XX: only tags still unacknowledged); how many."""
        tags = list(set(self._delivered) | set(executing))
        if not tags:
            return 0
        now = time.time()
        with self.channel.conn_or_acquire() as client:
            client.zadd(self.unacked_index_key, {tag: now for tag in tags}, xx=True)
        return len(tags)


class MultiChannelPoller(kombu_redis.MultiChannelPoller):
    """The poller of a worker's event loop: proves the worker alive before each restore sweep."""

    def maybe_restore_messages(self):
        # A task still running from before a reconnect was delivered by a channel that is gone: no channel
        # holds its tag any more, so it is stamped by its tag among the tasks executing (or, with no stamp,
        # restored after visibility_timeout while it still runs: a second delivery beside the first).
        executing = executing_delivery_tags()
        for channel in list(self._channels):
            qos = channel._qos  # None until the channel received something
            if qos is None and executing:
                qos = channel.qos  # created on demand: the tasks still running need their stamps
            if qos is None or not hasattr(qos, "stamp_held"):
                continue
            try:
                qos.stamp_held(executing)
            except channel.connection_errors:
                log.debug("could not re-stamp held messages; the next sweep tries again", exc_info=True)
        return super().maybe_restore_messages()


class Channel(kombu_redis.Channel):
    """A Redis channel whose late acks, rejects and restores survive the close of its connection."""

    QoS = QoS
    _saved_connparams: dict | None = None

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            if asynchronous or self._saved_connparams is None:
                import redis

                raise redis.ConnectionError("broker connection already closed")
            return copy.copy(self._saved_connparams)
        params = super()._connparams(asynchronous=asynchronous)
        if not asynchronous:
            self._saved_connparams = copy.copy(params)
        return params


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above (``broker_transport = "workers.redis_transport:Transport"``)."""

    Channel = Channel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with the fixes above: late acks, rejects and restores survive a closed connection.

    kombu builds a Sentinel pool from ``connection.client.alt`` (one URL per sentinel); once the connection
    object is gone, the sentinels remembered from the last successful build are asked instead.
    """

    _saved_sentinels: list | None = None

    def _sentinel_managed_pool(self, asynchronous=False):
        client = self.connection.client
        if client is not None:
            self._saved_sentinels = list(client.alt)
            return super()._sentinel_managed_pool(asynchronous)
        from redis import sentinel

        params = self._connparams(asynchronous)  # the remembered ones (raises ConnectionError without any)
        extra = {k: v for k, v in params.items() if k not in ("host", "port")}
        hosts = []
        for url in self._saved_sentinels or []:
            parsed = kombu_redis._parse_url(url)
            if parsed.scheme == "sentinel":
                hosts.append((parsed.hostname, parsed.port or SentinelTransport.default_port))
        manager = sentinel.Sentinel(hosts or [(params["host"], params["port"])],
                                    min_other_sentinels=getattr(self, "min_other_sentinels", 0),
                                    sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **extra)
        self._sentinel_manager = manager  # closed with the channel's pools (kombu's _disconnect_pools)
        import redis

        return manager.master_for(self.master_name, redis.Redis,
                                  **{k: extra[k] for k in ("username", "password") if k in extra}).connection_pool


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with the channel and poller above
    (``broker_transport = "workers.redis_transport:SentinelTransport"``)."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


def register_sentinel_alias() -> None:
    """Make kombu's ``sentinel`` transport alias this module's ``SentinelTransport`` (idempotent).

    kombu resolves an alias once per process and caches the class: the cached entry is replaced too.
    """
    from kombu import transport

    path = f"{__name__}:SentinelTransport"
    transport.TRANSPORT_ALIASES["sentinel"] = path
    if transport._transport_cache.get("sentinel") not in (None, SentinelTransport):
        transport._transport_cache.pop("sentinel")


register_sentinel_alias()
