"""The embedded local platform: every service a demo and the tests need, on one machine.

``backupctl platform up|down|status``.  Each service runs under the state folder
(``platform.state_dir``) with its pid recorded there; ``down`` stops only what
``up`` started, by pid.  A Redis already listening on the configured port is
reused and never stopped.

Services, started in this order (a service waits for those it needs to be ready):
  redis      redis-server (only if none listens already)
  metastore  Derby's network server: the Hive metastore database shared by every Spark JVM
  hdfs       Hadoop's MiniDFSCluster: a NameNode and DataNodes, WebHDFS on (local_platform/hadoop.py)
  yarn       Hadoop's MiniYARNCluster: a ResourceManager and a NodeManager
  spark      one JVM from the pyspark wheel serving HiveServer2 and Spark Connect, its warehouse
             on HDFS and its metastore the shared one
  sshd    OpenSSH on loopback, generated host and client keys: the edge node
  sinks   SMTP server keeping every message + HTTP ticket receiver (local_platform/sinks.py)
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError, ConnectionFailed
from config.settings import Settings
from local_platform.hadoop import WAREHOUSE, LocalHadoop


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(ports: list[int], timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until every port accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        pending = [p for p in pending if not port_open(p)]
        if not pending:
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ConnectionFailed(f"service exited with code {proc.returncode} before ports {pending} opened; log {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise ConnectionFailed(f"ports {pending} not open after {timeout:.0f}s (log: {log})")
        time.sleep(0.2)


@dataclass
class Service:
    name: str
    ports: list[int]
    needs: tuple[str, ...] = ()  # services that must be ready before this one starts


def wait_until_ready(name: str, check, timeout: float, proc: subprocess.Popen | None, log: Path) -> None:
    """Poll ``check()`` (None when ready, else what is missing) until ready; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while (missing := check()) is not None:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ConnectionFailed(f"{name} exited with code {proc.returncode} before it was ready; log {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise ConnectionFailed(f"{name} not ready after {timeout:.0f}s: {missing} (log: {log})")
        time.sleep(0.3)


class LocalPlatform:
    """Start, stop and report the local services under one state folder."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.p = settings.platform
        self.state = settings.path(self.p.state_dir).resolve()
        self.run_dir = self.state / "run"
        self.log_dir = self.state / "logs"
        home = settings.path(self.p.hadoop_home).resolve() if self.p.hadoop_home else None
        self.hadoop = LocalHadoop(self.p, self.state, home)

    # -- bookkeeping -------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _pid(self, name: str) -> int | None:
        f = self._pidfile(name)
        try:
            pid = int(f.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
            return None
        except PermissionError:
            pass
        return pid

    def _spawn(self, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        # New session: the service outlives this command and gets its own process group for `down`.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        self._pidfile(name).write_text(str(proc.pid))
        return proc

    def services(self) -> list[Service]:
        """The services and their ports."""
        p = self.p
        return [
            Service("redis", [p.redis_port]),
            Service("metastore", [p.metastore_port]),
            Service("hdfs", [p.namenode_port, p.namenode_http_port, p.hdfs_control_port]),
            Service("yarn", [p.resourcemanager_port, p.resourcemanager_http_port], needs=("hdfs",)),
            Service("spark", [p.hive_port, p.connect_port], needs=("metastore", "hdfs")),
            Service("sshd", [p.ssh_port]),
            Service("sinks", [p.smtp_port, p.ticket_port]),
        ]

    # -- up ------------------------------------------------------------------
    def up(self, only: list[str] | None = None, timeout: float = 180) -> dict[str, str]:
        """Start every (or the named) service not already running; wait until each is ready.

        Services start side by side; one that needs another (spark needs hdfs and the metastore)
        starts once those are ready.  A service's readiness is its ports plus, for hdfs and
        yarn, what the daemons say of themselves (see ``_ready``).
        """
        report = {}
        started: dict[str, subprocess.Popen] = {}
        ready: set[str] = set()
        wanted = [svc for svc in self.services() if not only or svc.name in only]
        if any(svc.name in ("hdfs", "yarn", "metastore") for svc in wanted):
            self.hadoop.ensure_installed()
            self.hadoop.write_conf()
        for svc in wanted:
            for need in svc.needs:
                if need in started and need not in ready:
                    self._wait_ready(self._service(need), started[need], timeout)
                    ready.add(need)
            if all(port_open(port) for port in svc.ports):
                report[svc.name] = "running" if self._pid(svc.name) else "reused (not started by us)"
                continue
            if any(port_open(port) for port in svc.ports):
                busy = [port for port in svc.ports if port_open(port)]
                raise ConfigError(f"{svc.name}: port(s) {busy} already taken by another program; change platform ports")
            started[svc.name] = getattr(self, f"_start_{svc.name}")()
        for name, proc in started.items():
            if name not in ready:
                self._wait_ready(self._service(name), proc, timeout)
            report[name] = "started"
        if "hdfs" in started:
            self.hadoop.prepare_hdfs(self.p.hdfs_user)
        return report

    def _service(self, name: str) -> Service:
        return next(svc for svc in self.services() if svc.name == name)

    def _wait_ready(self, svc: Service, proc: subprocess.Popen, timeout: float) -> None:
        log = self.log_dir / f"{svc.name}.log"
        wait_for_ports(svc.ports, timeout, proc, log)
        check = {"hdfs": self.hadoop.hdfs_ready, "yarn": self.hadoop.yarn_ready}.get(svc.name)
        if check is not None:
            wait_until_ready(svc.name, check, timeout, proc, log)

    def _start_metastore(self) -> subprocess.Popen:
        return self._spawn("metastore", self.hadoop.metastore_command(), cwd=self.state / "metastore")

    def _start_hdfs(self) -> subprocess.Popen:
        self.hadoop.ready_file("hdfs").unlink(missing_ok=True)
        return self._spawn("hdfs", self.hadoop.hdfs_command(), env=self.hadoop.daemon_env())

    def _start_yarn(self) -> subprocess.Popen:
        self.hadoop.ready_file("yarn").unlink(missing_ok=True)
        return self._spawn("yarn", self.hadoop.yarn_command(), env=self.hadoop.daemon_env(), cwd=self.hadoop.yarn_dir())

    def _start_redis(self) -> subprocess.Popen:
        exe = shutil.which("redis-server")
        if not exe:
            raise ConfigError("redis-server not found: install the Debian package redis-server (make deps does)")
        # Embedded default keeps nothing on disk; production uses persistence and maxmemory-policy noeviction.
        return self._spawn("redis", [exe, "--bind", "127.0.0.1", "--port", str(self.p.redis_port),
                                     "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"])

    def spark_home(self) -> Path:
        """SPARK_HOME inside the installed pyspark wheel."""
        import pyspark

        return Path(pyspark.__file__).resolve().parent

    def _start_spark(self) -> subprocess.Popen:
        home = self.spark_home()
        (self.state / "spark").mkdir(parents=True, exist_ok=True)
        # One JVM serves every client (workers, CLIs, tests, Spark Connect sessions) with a few task slots.  Spark's
        # default FIFO order gives each slot to the oldest job: a one-second query waited behind a minute-long
        # INSERT holding every slot.  Fair sharing among the jobs of the default pool lets them interleave.
        pools = self.state / "spark" / "fairscheduler.xml"
        pools.write_text('<?xml version="1.0"?>\n<allocations>\n  <pool name="default">\n'
                         '    <schedulingMode>FAIR</schedulingMode>\n    <weight>1</weight>\n'
                         '    <minShare>0</minShare>\n  </pool>\n</allocations>\n')
        # HADOOP_CONF_DIR: hdfs:// paths reach the local HDFS; its hive-site names the shared metastore.
        env = dict(os.environ, SPARK_HOME=str(home), PYSPARK_PYTHON=sys.executable,
                   SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(self.log_dir),
                   HADOOP_CONF_DIR=str(self.hadoop.conf_dir))
        argv = [
            str(home / "bin" / "spark-submit"),
            "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
            "--master", self.p.spark_master,
            "--driver-memory", self.p.spark_driver_memory,
            "--conf", "spark.plugins=org.apache.spark.sql.connect.SparkConnectPlugin",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", f"spark.connect.grpc.binding.port={self.p.connect_port}",
            "--conf", f"spark.ui.port={self.p.spark_ui_port}",
            "--conf", f"spark.sql.warehouse.dir={self.hadoop.namenode_uri}{WAREHOUSE}",
            "--driver-class-path", str(self.hadoop.derby_client_jar),
            # Each option is one flag without spaces (config.settings.JVM_OPTION): joined, they split back exactly.
            *(("--driver-java-options", " ".join(self.p.jvm_options)) if self.p.jvm_options else ()),
            "--conf", f"spark.hadoop.hive.server2.thrift.port={self.p.hive_port}",
            "--conf", "spark.hadoop.hive.server2.thrift.bind.host=127.0.0.1",
            "--conf", "spark.hadoop.hive.server2.authentication=NOSASL",
            "--conf", "spark.sql.shuffle.partitions=4",
            "--conf", "spark.scheduler.mode=FAIR",
            "--conf", f"spark.scheduler.allocation.file={pools.as_uri()}",  # a bare path is read from HDFS
            # A table's partition folders are listed by the driver (a few NameNode calls), not by a Spark job of one
            # task per folder (the default above 32 folders) that waits for free slots like any other job.
            "--conf", "spark.sql.sources.parallelPartitionDiscovery.threshold=10000",
            "spark-internal",
        ]
        # What Spark leaves in its working directory (derby.log, spark-warehouse of a misconfigured run) stays here.
        return self._spawn("spark", argv, env=env, cwd=self.state / "spark")

    def ssh_dir(self) -> Path:
        """Keys, sshd_config and known_hosts of the local edge node."""
        return self.state / "ssh"

    def ensure_ssh_keys(self) -> None:
        """Generate host and client keys and the client's known_hosts once."""
        d = self.ssh_dir()
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        keygen = shutil.which("ssh-keygen")
        if not keygen:
            raise ConfigError("ssh-keygen not found: install openssh-client (make deps does)")
        # host_rsa: a second host key type, so the tests can show a known_hosts holding only the RSA key.
        for key, kind in (("host_ed25519", "ed25519"), ("host_rsa", "rsa"), ("client_key", "ed25519")):
            if not (d / key).exists():
                subprocess.run([keygen, "-q", "-t", kind, "-N", "", "-f", str(d / key)], check=True)
        host_pub = (d / "host_ed25519.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.p.ssh_port} {host_pub[0]} {host_pub[1]}\n")
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)

    def _start_sshd(self) -> subprocess.Popen:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise ConfigError("sshd not found: install the Debian package openssh-server (make deps does)")
        self.ensure_ssh_keys()
        d = self.ssh_dir()
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir sshd insists on
        cfg = d / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.p.ssh_port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {d / 'host_ed25519'}",
            f"HostKey {d / 'host_rsa'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            f"PidFile {self.run_dir / 'sshd.real.pid'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "",
        ]))
        # -D: stay in the foreground so the pid we record is sshd itself; -e: log to stderr (our log file).
        return self._spawn("sshd", [sshd, "-D", "-e", "-f", str(cfg)])

    def _start_sinks(self) -> subprocess.Popen:
        return self._spawn("sinks", [sys.executable, "-m", "local_platform.sinks",
                                     "--dir", str(self.state / "sinks"),
                                     "--smtp-port", str(self.p.smtp_port),
                                     "--http-port", str(self.p.ticket_port)],
                           cwd=Path(__file__).resolve().parent.parent)

    # -- down / status -------------------------------------------------------
    def down(self, only: list[str] | None = None, timeout: float = 30) -> dict[str, str]:
        """Stop what ``up`` started (by recorded pid), leave anything else alone.

        Every service is sent SIGTERM first, then all are waited for together (SIGKILL for any still
        running after ``timeout``): each JVM takes seconds to shut down cleanly, and they do not depend
        on one another for it, so the whole stop costs the slowest one, not their sum."""
        report, stopping = {}, {}
        for svc in reversed(self.services()):
            if only and svc.name not in only:
                continue
            pid = self._pid(svc.name)
            if pid is None:
                report[svc.name] = "not started by us"
                continue
            stopping[svc.name] = pid
        self._stop_pids(list(stopping.values()), timeout)
        for name in stopping:
            self._pidfile(name).unlink(missing_ok=True)
            report[name] = "stopped"
        return report

    @staticmethod
    def _stop_pids(pids: list[int], timeout: float) -> None:
        """SIGTERM each process group, wait up to ``timeout`` for all of them, SIGKILL the groups left."""
        alive = []
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while alive and time.monotonic() < deadline:
            for pid in list(alive):
                # Reap it if it is our child (tests start services in-process).
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    alive.remove(pid)
            if alive:
                time.sleep(0.1)
        for pid in alive:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def status(self) -> dict[str, dict]:
        """Per service: pid if ours, whether each port answers, and how clients reach it."""
        p, h = self.p, self.hadoop
        out = {svc.name: {"pid": self._pid(svc.name), "ports": {port: port_open(port) for port in svc.ports}}
               for svc in self.services()}
        endpoints = {
            "redis": {"url": self.s.redis.url},
            "metastore": {"jdbc_url": h.metastore_url},
            "hdfs": {"namenode_uri": h.namenode_uri, "webhdfs_url": h.webhdfs_url,
                     "hadoop_conf_dir": str(h.conf_dir), "superuser": getpass.getuser(), "user": p.hdfs_user},
            "yarn": {"resourcemanager_url": h.resourcemanager_url,
                     "web_ui": f"http://127.0.0.1:{p.resourcemanager_http_port}/cluster"},
            "spark": {"hiveserver2": {"host": "127.0.0.1", "port": p.hive_port},
                      "spark_connect": {"url": f"sc://127.0.0.1:{p.connect_port}"},
                      "warehouse": f"{h.namenode_uri}{WAREHOUSE}"},
            "sshd": {"port": p.ssh_port},
            "sinks": {"smtp": {"port": p.smtp_port}, "ticket": {"url": f"http://127.0.0.1:{p.ticket_port}/tickets"}},
        }
        for name, extra in endpoints.items():
            out[name].update(extra)
        # The names operators look for, at the top level too.
        out["hiveserver2"] = {"pid": out["spark"]["pid"], **endpoints["spark"]["hiveserver2"]}
        out["spark_connect"] = {"pid": out["spark"]["pid"], **endpoints["spark"]["spark_connect"]}
        out["smtp"] = {"pid": out["sinks"]["pid"], **endpoints["sinks"]["smtp"]}
        out["ticket"] = {"pid": out["sinks"]["pid"], **endpoints["sinks"]["ticket"]}
        return out
