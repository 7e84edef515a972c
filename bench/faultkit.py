"""Tools that make faults on the local platform, shared by the fault campaign (bench/faults.py) and the tests.

Everything here talks to loopback only: a Redis of its own, a TCP relay in front
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
