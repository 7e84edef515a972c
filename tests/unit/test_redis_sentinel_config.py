"""redis.url: sentinel://… at load (one-line errors, loopback rule, password from the environment only) and what
it becomes: kombu's and Celery's own Sentinel support for the broker and results, redbeat's for beat, redis-py's
``Sentinel.master_for`` for locks and job records, WAIT on the fencing steps.  The real fail-over is in
tests/integration/test_redis_sentinel.py."""

from __future__ import annotations

import pytest
import yaml

from base.errors import ConfigError
from config.settings import load_settings

URL = "sentinel://127.0.0.1:26379,127.0.0.1:26380,[::1]:26381/3?master=mb-prod"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("BACKUP_REDIS_PASSWORD", raising=False)
    return monkeypatch


def _load(tmp_path, redis: dict):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"redis": redis}))
    return load_settings(path)


@pytest.mark.parametrize("url,message", [
    ("sentinel://127.0.0.1:26379/0", "needs one ?master=<name>"),
    ("sentinel://127.0.0.1:26379/0?master=a&master=b", "needs one ?master=<name>"),
    ("sentinel://127.0.0.1:26379/0?master=m;rm", "needs one ?master=<name>"),
    ("sentinel://127.0.0.1:26379/0?master=m&socket_timeout=1", "unknown query parameter(s) socket_timeout"),
    ("sentinel://:s3cret@127.0.0.1:26379/0?master=m", "carries credentials"),
    ("sentinel://mb@127.0.0.1:26379/0?master=m", "carries credentials"),
    ("sentinel://127.0.0.1:70000/0?master=m", "bad port"),
    ("sentinel://127.0.0.1:26379,/0?master=m", "sentinel address '' is not host:port"),
    ("sentinel://127.0.0.1:26379,127.0.0.1:26379/0?master=m", "names a sentinel twice"),
    ("sentinel://127.0.0.1:26379/16?master=m", "database '16' must be a number from 0 to 15"),
    ("sentinel://127.0.0.1:26379/0?master=m#x", "#fragment"),
    ("sentinel://127.0.0.1:26379/0?master=m x", "spaces or control characters"),
    ("sentinels://127.0.0.1:26379/0?master=m", "must start with redis:// or rediss:// or sentinel://"),
])
def test_a_bad_sentinel_url_is_one_line_naming_the_key(tmp_path, clean_env, url, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, {"url": url})
    assert "redis.url" in str(e.value) and message in str(e.value), str(e.value)
    assert "\n" not in e.value.one_line() and "s3cret" not in str(e.value)


def test_a_sentinel_url_is_parsed_and_waits_for_one_replica_by_default(tmp_path, clean_env):
    s = _load(tmp_path, {"url": URL})
    assert s.redis.sentinel.sentinels == (("127.0.0.1", 26379), ("127.0.0.1", 26380), ("::1", 26381))
    assert (s.redis.sentinel.db, s.redis.sentinel.master) == (3, "mb-prod")
    assert s.redis.replicas_to_wait == 1 and s.redis.on_loopback
    assert _load(tmp_path, {"url": "redis://127.0.0.1:6379/0"}).redis.replicas_to_wait == 0
    assert _load(tmp_path, {"url": URL, "wait_replicas": 2}).redis.replicas_to_wait == 2


def test_a_sentinel_off_loopback_needs_the_password(tmp_path, clean_env):
    off = "sentinel://127.0.0.1:26379,sentinel.example:26379/0?master=m"
    with pytest.raises(ConfigError, match="not on loopback, so BACKUP_REDIS_PASSWORD must be set"):
        _load(tmp_path, {"url": off})
    clean_env.setenv("BACKUP_REDIS_PASSWORD", "pw")
    assert not _load(tmp_path, {"url": off}).redis.on_loopback


def test_celery_gets_kombus_sentinel_transport_with_our_fixes_and_the_password(tmp_path, clean_env):
    clean_env.setenv("BACKUP_REDIS_PASSWORD", "p@ss")
    from workers.app import celery_config

    conf = celery_config(_load(tmp_path, {"url": URL}))
    one = ["sentinel://:p%40ss@127.0.0.1:26379/3", "sentinel://:p%40ss@127.0.0.1:26380/3",
           "sentinel://:p%40ss@[::1]:26381/3"]
    assert conf["broker_url"] == conf["result_backend"] == ";".join(one)
    assert conf["broker_transport"] == "workers.redis_transport:SentinelTransport"
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "mb-prod" and options["visibility_timeout"] == 600
    assert conf["broker_transport_options"]["unacked_restore_interval"] == 5  # the re-stamping sweep stays
    assert conf["redbeat_redis_url"].startswith("redis-sentinel://")
    beat = conf["redbeat_redis_options"]
    assert (beat["sentinels"], beat["service_name"], beat["db"], beat["password"]) == (
        [("127.0.0.1", 26379), ("127.0.0.1", 26380), ("::1", 26381)], "mb-prod", 3, "p@ss")


def test_the_sentinel_transport_keeps_the_outage_fixes():
    from kombu.transport import redis as kombu_redis

    from workers import redis_transport as ours

    assert issubclass(ours.SentinelTransport, kombu_redis.SentinelTransport)
    assert ours.SentinelTransport.Channel.QoS is ours.QoS
    assert ours.SentinelTransport.Channel._connparams is ours.Channel._connparams
    assert ours.SentinelTransport.Channel.connection_class is kombu_redis.SentinelChannel.connection_class
    assert isinstance(ours.SentinelTransport(client=_FakeClient()).cycle, ours.MultiChannelPoller)


class _FakeClient:  # what kombu's Transport reads from its Connection at construction
    transport_options: dict = {}


def test_the_project_client_asks_the_sentinels_for_the_primary(tmp_path, clean_env):
    clean_env.setenv("BACKUP_REDIS_PASSWORD", "pw")
    from redis.sentinel import SentinelConnectionPool

    from backup.resources import Resources, redis_client

    s = _load(tmp_path, {"url": URL, "wait_replicas": 2, "wait_timeout_ms": 500})
    client = redis_client(s)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mb-prod"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 3
    assert [c.connection_pool.connection_kwargs.get("password") for c in pool.sentinel_manager.sentinels] == [None] * 3
    locks = Resources(s, _redis=client).locks
    assert (locks.wait_replicas, locks.wait_timeout_ms) == (2, 500)


def test_a_connection_failing_over_to_the_next_sentinel_keeps_our_transport(tmp_path, clean_env):
    """kombu's switch() takes the next URL's transport from its scheme: the 'sentinel' alias must be ours."""
    from kombu import Connection

    from workers import redis_transport as ours
    from workers.app import celery_config

    conf = celery_config(_load(tmp_path, {"url": URL}))
    conn = Connection(conf["broker_url"], transport=conf["broker_transport"],
                      transport_options=conf["broker_transport_options"])
    assert conn.get_transport_cls() is ours.SentinelTransport
    assert len(conn.alt) == 3
    for _ in conn.alt:  # what a lost connection does: the next sentinel's URL
        conn.maybe_switch_next()
        assert conn.get_transport_cls() is ours.SentinelTransport, conn.transport_cls
