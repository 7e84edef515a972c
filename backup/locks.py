"""Redis locks with TTL, renewal and fencing tokens; they replace the legacy PID guard.

A lock is one key ``<prefix>:lock:<workflow>:<target>`` whose value is
``<token>:<job_id>``.  The token comes from a per-lock counter that only
grows (``INCR``), so a later holder always has a larger token.  Every commit
step calls ``check`` (or writes through ``JobStore`` with the token), which
fails with ``LockLost`` once somebody else holds the lock: a worker that
stalled past its TTL cannot commit anything afterwards.

A holder that died simply stops renewing; the key expires after ``ttl`` and
the next run proceeds.  A run whose lock expired while nobody else took it
(e.g. a long queue wait between two phases) gets it back with the same
token, because the counter proves nobody was granted a newer one.

Across a fail-over (Redis Sentinel): replication is asynchronous, so a new
primary may miss the newest writes of the old one.  Were a granted token lost,
the counter would go backwards and the same token be granted twice, and the
re-take above would let two runs commit.  So with ``wait_replicas`` > 0 every
step that moves the fence or proves a commit - a take, a revoke, the check
before a commit - is followed on the same connection by ``WAIT wait_replicas
wait_timeout_ms``, and counts only if that many replicas acknowledged it (a
take not acknowledged is given back and fails as ``ConnectionFailed``, a check
as ``LockRenewalFailed``: both retried).  Sentinel promotes the replica with
the most replicated data, so an acknowledged token survives the loss of the
primary (not the loss of the primary *and* every replica that acknowledged it).
The periodic renewal does not wait: losing one only makes the lock expire
sooner, which fences the holder out rather than in.  Cost: one round trip to a
replica per take, revoke and commit check.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from base.errors import ConnectionFailed, LockLost, LockRenewalFailed

#: what a WAIT that was not acknowledged by enough replicas means for the step that preceded it
_NOT_DURABLE = ("only {acked} of {wanted} replica(s) acknowledged {what} within {timeout} ms: it could be lost in a "
                "fail-over (redis.wait_replicas)")

# KEYS[1]=lock KEYS[2]=counter ARGV[1]=job_id ARGV[2]=ttl_ms -> {1, token} or {0, holder}
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, tostring(token)}
"""

# Renew, or re-take an expired lock nobody else was granted since. ARGV[1]=value ARGV[2]=ttl_ms ARGV[3]=token
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1
end
if not cur and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 2
end
return 0
"""

# Take a lock away from a (hung) holder: drop it if still its, and move the counter past its token so
# that its renewal can never re-take it. ARGV[1]=value ARGV[2]=token
_REVOKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('INCR', KEYS[2]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Held:
    """Proof of holding a lock: the key, the fencing token and the holder's job id."""

    key: str
    token: int
    job_id: str

    @property
    def value(self) -> str:
        return f"{self.token}:{self.job_id}"

    def as_dict(self) -> dict:
        return {"key": self.key, "token": self.token, "job_id": self.job_id}

    @classmethod
    def from_dict(cls, d: dict) -> "Held":
        return cls(d["key"], int(d["token"]), d["job_id"])


class LockManager:
    """Acquire, renew, check and release fenced locks in Redis."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int, wait_replicas: int = 0, wait_timeout_ms: int = 2000):
        self.r = client
        self.prefix = prefix
        self.ttl_ms = ttl * 1000
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._revoke = client.register_script(_REVOKE)

    def key(self, workflow: str, target: str) -> str:
        """Redis key of the lock for (workflow, target)."""
        return f"{self.prefix}:lock:{workflow}:{target}"

    def _run(self, script, keys: list, args: list) -> tuple:
        """Run ``script`` and, with ``wait_replicas``, WAIT on the same connection; (result, replicas that acked)."""
        if not self.wait_replicas:
            return script(keys=keys, args=args), 0
        pipe = self.r.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        result, acked = pipe.execute()
        return result, int(acked)

    def _durable(self, acked: int) -> bool:
        return acked >= self.wait_replicas

    def _not_durable(self, acked: int, what: str) -> str:
        return _NOT_DURABLE.format(acked=acked, wanted=self.wait_replicas, what=what, timeout=self.wait_timeout_ms)

    def acquire(self, workflow: str, target: str, job_id: str) -> tuple[Held | None, str | None]:
        """Try once: (Held, None) if granted, (None, holder job id) if someone holds it.

        A lock found held by ``job_id`` itself is this call's own take whose reply was lost (redis-py
        sent the script again after a dropped connection): it is granted with the token it holds.
        """
        key = self.key(workflow, target)
        try:
            (ok, val), acked = self._run(self._acquire, [key, key + ":fence"], [job_id, self.ttl_ms])
        except redis.RedisError as e:
            raise ConnectionFailed(f"acquire lock {key}: {e}") from e
        val = val.decode() if isinstance(val, bytes) else str(val)
        if ok != 1:
            token, _, holder = val.partition(":")
            if holder != job_id:
                return None, holder
            val = token
        held = Held(key, int(val), job_id)
        if not self._durable(acked):
            try:
                self.release(held)
            except ConnectionFailed:
                pass  # it expires after its TTL; the counter has moved on either way
            raise ConnectionFailed(f"acquire lock {key}: {self._not_durable(acked, f'fencing token {held.token}')}; "
                                   f"not taken")
        return held, None

    def holder(self, workflow: str, target: str) -> str | None:
        """Job id holding the lock, if any."""
        v = self.r.get(self.key(workflow, target))
        return v.decode().split(":", 1)[-1] if v else None

    def renew(self, held: Held, durable: bool = False) -> None:
        """Extend the TTL; LockLost if another run was granted the lock meanwhile.

        ``durable``: also wait for ``wait_replicas`` replicas (LockRenewalFailed if too few acknowledge).
        """
        try:
            if durable:
                res, acked = self._run(self._renew, [held.key, held.key + ":fence"],
                                       [held.value, self.ttl_ms, held.token])
            else:
                res, acked = self._renew(keys=[held.key, held.key + ":fence"],
                                         args=[held.value, self.ttl_ms, held.token]), self.wait_replicas
        except redis.RedisError as e:
            raise LockRenewalFailed(f"renew lock {held.key}: {e}") from e
        if res == 0:
            raise LockLost(f"lock {held.key} is now held by another run; this run (token {held.token}) must not commit")
        if not self._durable(acked):
            raise LockRenewalFailed(f"lock {held.key}: {self._not_durable(acked, 'the fencing check')}")

    def check(self, held: Held) -> None:
        """The fencing check before a commit: renew, durably (acknowledged by ``wait_replicas`` replicas)."""
        self.renew(held, durable=True)

    def release(self, held: Held) -> bool:
        """Release if still ours; True if it was."""
        try:
            return bool(self._release(keys=[held.key], args=[held.value]))
        except redis.RedisError as e:
            raise ConnectionFailed(f"release lock {held.key}: {e}") from e

    def revoke(self, held: Held) -> None:
        """Fence ``held`` out for good: its holder can no longer renew, re-take or commit with it."""
        try:
            _, acked = self._run(self._revoke, [held.key, held.key + ":fence"], [held.value, held.token])
        except redis.RedisError as e:
            raise ConnectionFailed(f"revoke lock {held.key}: {e}") from e
        if not self._durable(acked):
            raise ConnectionFailed(f"revoke lock {held.key}: {self._not_durable(acked, 'the fence move')}")


class Renewer:
    """Background thread renewing a lock while a phase runs; remembers a loss for the next check."""

    def __init__(self, locks: LockManager, held: Held, every: float):
        self.locks, self.held, self.every = locks, held, every
        self.lost: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew {held.key}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.locks.renew(self.held)
            except LockLost as e:
                self.lost = e
                return
            except LockRenewalFailed:
                continue  # transient; the next tick tries again well before the TTL runs out

    def check(self) -> None:
        """Raise LockLost if the lock was lost, else renew now (the fencing check before a commit)."""
        if self.lost:
            raise self.lost
        self.locks.check(self.held)

    def __enter__(self) -> "Renewer":
        self.locks.renew(self.held)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __exit__(self, *exc) -> None:
        self.stop()
