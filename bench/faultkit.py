"""Tools that make faults on the local platform, shared by the fault campaign (bench/faults.py) and the tests.

Everything here talks to loopback only: a Redis of its own (or a Sentinel group:
a primary, a replica and three sentinels), a TCP relay in front
of the platform's sshd (closed: connections refused; frozen: a black hole),
Celery worker processes that can be killed, paused or lose one pool child.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis as redis_py

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PrivateRedis:
    """redis-server on a loopback port of its own, production persistence (AOF everysec, noeviction), restartable."""

    def __init__(self, port: int, folder: Path):
        self.port, self.folder = port, folder
        self.ports = (port,)  # every port it listens on
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "PrivateRedis":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
             "--save", "", "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis_py.Redis(port=self.port, socket_connect_timeout=1)
        wait_until(lambda: self._ping(client), timeout, f"redis on port {self.port}")
        return self

    @staticmethod
    def _ping(client) -> bool:
        try:
            return client.ping()
        except redis_py.RedisError:
            return False

    def shutdown_nosave(self) -> None:
        """SHUTDOWN NOSAVE (a clean stop: AOF is flushed)."""
        try:
            redis_py.Redis(port=self.port).shutdown(nosave=True)
        except redis_py.ConnectionError:
            pass  # the server closes the connection as it goes
        self.proc.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL: what AOF everysec has not written yet (up to a second of writes) is lost."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    stop = kill


class SentinelGroup:
    """A Redis primary, one replica and three sentinels (Debian's redis-server in sentinel mode), on loopback.

    Ports: ``port`` the first primary, ``port + 1`` its replica, ``port + 2 .. port + 4`` the sentinels
    (quorum 2, primary down after 1 s: a fail-over takes about 2-5 s).  Data nodes keep production
    persistence (AOF everysec, noeviction).  ``kill_primary`` SIGKILLs whichever node is primary now;
    ``restart`` brings a killed node back as it was started, and the sentinels make it a replica of the
    new primary.  ``url`` is the project's ``redis.url`` for it.
    """

    MASTER = "mbtest"

    def __init__(self, port: int, folder: Path, db: int = 0, pid_dir: Path | None = None):
        self.port, self.folder, self.db, self.pid_dir = port, folder, db, pid_dir
        self.data_ports = (port, port + 1)
        self.sentinel_ports = (port + 2, port + 3, port + 4)
        self.ports = self.data_ports + self.sentinel_ports  # every port the group listens on
        self.url = (f"sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinel_ports)}/{db}"
                    f"?master={self.MASTER}")
        self.procs: dict[int, subprocess.Popen] = {}

    # -- processes -----------------------------------------------------------------------------------------------

    def _start_data(self, port: int, replica_of: int | None) -> None:
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--save", "",
             "--logfile", str(folder / "redis.log"), "--repl-diskless-sync-delay", "0",  # a replica links at once
             *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else [])],
            stdin=subprocess.DEVNULL, start_new_session=True)
        self._note_pid(port)

    def _note_pid(self, port: int) -> None:
        """A pidfile per process in ``pid_dir``: what a crashed session leaves is stopped by the next one."""
        if self.pid_dir is not None:
            self.pid_dir.mkdir(parents=True, exist_ok=True)
            (self.pid_dir / f"sentinel-group-{port}.pid").write_text(str(self.procs[port].pid))

    @staticmethod
    def _sentinel_id(port: int) -> str:
        return f"{port:040x}"

    def _start_sentinel(self, port: int) -> None:
        folder = self.folder / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # the sentinel rewrites it (what it learns); written once
        if not conf.exists():
            # Each sentinel is told its peers and the replica up front (instead of learning them from hello
            # messages and INFO within ~10 s): the group is ready as soon as the processes answer.
            known = "".join(f"sentinel known-sentinel {self.MASTER} 127.0.0.1 {p} {self._sentinel_id(p)}\n"
                            for p in self.sentinel_ports if p != port)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel myid {self._sentinel_id(port)}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
                f"sentinel known-replica {self.MASTER} 127.0.0.1 {self.port + 1}\n{known}")
        self.procs[port] = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._note_pid(port)

    def start(self, timeout: float = 30) -> "SentinelGroup":
        self._start_data(self.port, None)
        self._start_data(self.port + 1, self.port)
        for port in self.sentinel_ports:
            self._start_sentinel(port)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> tuple[str, int]:
        """Wait until every sentinel names the same primary, knows the other two and one replica, and that
        replica's link to the primary is up; the primary's address."""
        def ready():
            try:
                views = [self._ask(p, "SENTINEL", "MASTER", self.MASTER) for p in self.sentinel_ports]
                seen = {(v["ip"], int(v["port"])) for v in views}
                if len(seen) != 1 or any(int(v["num-other-sentinels"]) < 2 or int(v["num-slaves"]) < 1
                                          or v["flags"] != "master" for v in views):
                    return None
                primary = seen.pop()
                replica = next(p for p in self.data_ports if p != primary[1])
                info = redis_py.Redis(port=replica, socket_timeout=2).info("replication")
                if info.get("role") != "slave" or info.get("master_link_status") != "up" \
                        or int(info.get("master_port", 0)) != primary[1]:
                    return None
                return primary
            except (redis_py.RedisError, OSError, KeyError):
                return None
        return wait_until(ready, timeout, "the sentinel group to agree on a primary with a linked replica")

    def _ask(self, port: int, *command) -> dict:
        raw = redis_py.Redis(port=port, socket_timeout=2, decode_responses=True).execute_command(*command)
        return raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2]))

    def primary(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                host, p = redis_py.Redis(port=port, socket_timeout=2).sentinel_get_master_addr_by_name(self.MASTER)
                return host, int(p)
            except (redis_py.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def kill_primary(self) -> int:
        """SIGKILL the node that is primary now (what AOF everysec and the replica have not got is lost); its port."""
        _, port = self.primary()
        self.kill(port)
        return port

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def cut_replica(self) -> int:
        """From now on the primary's writes reach no replica: the replica is paused (SIGSTOP) and its link
        dropped by the primary (CLIENT KILL TYPE replica), so it cannot reconnect and catch up.  Every write
        acknowledged by the primary afterwards is lost by a fail-over made before ``resume``; the replica's port.

        Keep the cut shorter than the sentinels' down-after (1 s): a replica they saw down is not promoted.
        """
        _, primary = self.primary()
        replica = next(p for p in self.data_ports if p != primary)
        self.pause(replica)
        redis_py.Redis(port=primary, socket_timeout=2).execute_command("CLIENT", "KILL", "TYPE", "replica")
        return replica

    def pause(self, port: int) -> None:
        """SIGSTOP a node: as a replica it acknowledges nothing until ``resume``."""
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGCONT)

    def wait_failover(self, old: int, timeout: float = 30) -> tuple[str, int]:
        """Wait until every sentinel names a primary other than port ``old``; its address."""
        def moved():
            try:
                seen = {tuple(redis_py.Redis(port=p, socket_timeout=2).sentinel_get_master_addr_by_name(self.MASTER))
                        for p in self.sentinel_ports}
            except (redis_py.RedisError, TypeError):
                return None
            if len(seen) == 1:
                host, port = seen.pop()
                if int(port) != old:
                    role = redis_py.Redis(port=int(port), socket_timeout=2).info("replication").get("role")
                    return (host, int(port)) if role == "master" else None
            return None
        return wait_until(moved, timeout, f"the sentinels to fail over from port {old}")

    def restart(self, port: int, timeout: float = 30) -> tuple[str, int]:
        """Start the killed node ``port`` again as the replica of the primary the sentinels name (what its
        configuration, rewritten by the sentinels, says in production) and wait until it is linked."""
        _, primary = self.primary()
        self._start_data(port, primary)
        return self.wait_ready(timeout)

    def stop(self) -> None:
        for port, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                proc.kill()
                proc.wait()
            if self.pid_dir is not None:
                (self.pid_dir / f"sentinel-group-{port}.pid").unlink(missing_ok=True)


class Relay:
    """A TCP relay on a loopback port of its own to ``target_port``: open, closed (refused) or frozen (black hole);
    ``rate`` caps each connection (a slow link, so that a transfer lasts long enough to be hit)."""

    def __init__(self, target_port: int, port: int | None = None, rate: float | None = None):
        self.target = target_port
        self.rate = rate  # bytes/s per connection and direction (None: as fast as loopback goes)
        if port is None:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
        self.port = port
        self.sock: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.flowing = threading.Event()
        self.flowing.set()

    def open(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.flowing.wait()  # a frozen relay answers no handshake either
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def freeze(self) -> None:
        """Black hole: connections stay open, nothing passes either way, nothing is refused or reset."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                self.flowing.wait()
                data = a.recv(65536)
                if not data:
                    break
                self.flowing.wait()
                b.sendall(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening and drop every relayed connection: new connections are refused."""
        if self.sock is not None:
            # shutdown first: a close alone leaves the socket listening while the accept thread is blocked in
            # accept() (the kernel holds it until that call returns), so reopening the port fails with EADDRINUSE
            # when no connection came during the outage; shutdown wakes the blocked accept.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        for c in self.conns:
            c.close()
        self.conns.clear()


class Worker:
    """A ``celery worker`` process of the project in its own process group."""

    def __init__(self, config: Path, name: str, log: Path, queues: str = "default,io,spark", concurrency: int = 2):
        self.config, self.name, self.log, self.queues, self.concurrency = config, name, log, queues, concurrency
        self.proc: subprocess.Popen | None = None

    def start(self, app, timeout: float = 60) -> "Worker":
        env = dict(os.environ, BACKUP_CONFIG=str(self.config), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", self.queues, "-E",
             "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
            try:  # a pooled connection to a Redis restarted since may fail once: the next call reconnects
                return bool(app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5))
            except Exception:
                return False
        wait_until(answers, timeout, f"worker {self.name} to answer ping")
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """Pids of the pool's child processes."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Warm shutdown, SIGKILL if it hangs."""
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
