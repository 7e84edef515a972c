"""Hadoop on the local platform: fetch, configure, start and watch real HDFS and YARN daemons.

The daemons are Hadoop's own ``MiniDFSCluster`` (a NameNode and DataNodes, WebHDFS on) and
``MiniYARNCluster`` (a ResourceManager and NodeManagers) from
``org.apache.hadoop:hadoop-client-minicluster:3.5.0`` on Maven Central, the Hadoop version of the
pinned pyspark wheel.  ``local_platform/java/pom.xml`` names the jars; ``ensure_installed`` fetches them
with Maven into ``<hadoop_home>/lib`` once and compiles the small launcher
(``local_platform/java/LocalHadoop.java``) with javac.  The Derby network server jars come with them:
the Hive metastore database every Spark JVM (the platform's and drivers inside YARN) shares.

Two configuration folders are written under ``<hadoop_home>``:
  conf/          HADOOP_CONF_DIR for clients: core-site, hdfs-site, yarn-site and hive-site (the
                 shared metastore and the warehouse on HDFS).  The platform's Spark JVM and
                 spark-submit drivers read it; Spark ships it to drivers in YARN.
  daemon-conf/   the same plus local-daemons.xml (ports and sizes only the launcher reads).

Readiness is asked of the daemons themselves, never slept on: the NameNode's JMX says
``Operational`` with every DataNode live, the ResourceManager's REST API counts the NodeManagers.

The same launcher runs the Hadoop services of docker-compose.yml (``python -m local_platform.hadoop``,
see ``main``): the jars and the compiled launcher are fetched on the host into the build context
(``python -m local_platform.hadoop install --home .compose/hadoop``; ``make wheelhouse`` does it), never
from the network inside an image build; the container runs one daemon JVM in the foreground, asks the
same readiness questions every few seconds and writes the answer where the health check
(deploy/hadoop-health.sh) reads it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

from pydantic import ValidationError

from base.errors import ConfigError, ConnectionFailed
from config.settings import PlatformSettings

HADOOP_SOURCES = Path(__file__).resolve().parent / "java"
LAUNCHER = "LocalHadoop"
# Hadoop and Derby jars the launcher and the metastore need, all fetched by Maven.
REQUIRED_JARS = ("hadoop-client-minicluster-3.5.0.jar", "hadoop-client-runtime-3.5.0.jar",
                 "hadoop-client-api-3.5.0.jar", "junit-jupiter-api-5.14.4.jar", "slf4j-simple-1.7.36.jar",
                 "reload4j-1.2.25.jar", "bcprov-jdk18on-1.80.jar", "bcpkix-jdk18on-1.80.jar",
                 "derbynet-10.16.1.1.jar", "derbyclient-10.16.1.1.jar")
DERBY_CLIENT_JAR = "derbyclient-10.16.1.1.jar"
WAREHOUSE = "/user/hive/warehouse"
# The daemons log at WARN to the service log (INFO is a few MB a minute).
_LOG_LEVEL = ("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dorg.slf4j.simpleLogger.showDateTime=true")


def replication(p: PlatformSettings) -> int:
    """Replication of the local HDFS: 2, or 1 with a single DataNode."""
    return min(2, p.datanodes)


class LocalHadoop:
    """The jars, configuration and readiness of the local platform's HDFS, YARN and metastore."""

    def __init__(self, p: PlatformSettings, state: Path, home: Path | None = None, *,
                 host: str = "127.0.0.1", listen: str | None = None, namenode_host: str | None = None):
        self.p = p
        self.namenode_host = namenode_host or host  # where the NameNode is (another container's name for YARN's)
        # host: the address clients are told (URIs, DataNode host name); listen: the address the daemons
        # bind to (the container's 0.0.0.0 on a compose bridge network; loopback on the local platform).
        self.host = host
        self.listen = listen or host
        self.state = state
        self.home = home or state / "hadoop"  # jars and launcher: shareable between state folders
        self.lib = self.home / "lib"
        self.classes = self.home / "classes"
        self.conf_dir = state / "hadoop" / "conf"
        self.daemon_conf_dir = state / "hadoop" / "daemon-conf"

    # -- URLs ------------------------------------------------------------------
    @property
    def namenode_uri(self) -> str:
        return f"hdfs://{self.namenode_host}:{self.p.namenode_port}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://{self.namenode_host}:{self.p.namenode_http_port}/webhdfs/v1"

    @property
    def resourcemanager_url(self) -> str:
        return f"http://{self.host}:{self.p.resourcemanager_http_port}/ws/v1/cluster"

    @property
    def metastore_url(self) -> str:
        return f"jdbc:derby://127.0.0.1:{self.p.metastore_port}/metastore_db;create=true"

    @property
    def derby_client_jar(self) -> Path:
        return self.lib / DERBY_CLIENT_JAR

    # -- install -----------------------------------------------------------------
    def ensure_installed(self) -> None:
        """Fetch the jars from Maven Central and compile the launcher, each only when missing (cost: ~10 s once).

        Under an exclusive lock on ``<home>/.install.lock``: two sessions sharing a home (the test suite and
        the compose test of ``make test``) never read a jar the other is still writing."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._install()

    def installed(self) -> bool:
        """Every jar and the compiled launcher are in place (what a container checks: it fetches nothing)."""
        return all((self.lib / jar).is_file() for jar in REQUIRED_JARS) and (self.classes / f"{LAUNCHER}.class").is_file()

    def _install(self) -> None:
        if not all((self.lib / jar).is_file() for jar in REQUIRED_JARS):
            mvn = shutil.which("mvn")
            if not mvn:
                raise ConfigError("mvn not found: the local platform fetches Hadoop from Maven Central with Maven "
                                  "(Debian package maven; make deps installs it)")
            self.lib.mkdir(parents=True, exist_ok=True)
            done = subprocess.run([mvn, "-q", "-B", "-f", str(HADOOP_SOURCES / "pom.xml"), "dependency:copy-dependencies",
                                   f"-DoutputDirectory={self.lib}"], capture_output=True, text=True)
            missing = [jar for jar in REQUIRED_JARS if not (self.lib / jar).is_file()]
            if done.returncode != 0 or missing:
                raise ConnectionFailed(f"fetching Hadoop jars from Maven Central failed (exit {done.returncode}, "
                                       f"missing {missing}): {(done.stdout + done.stderr)[-1500:]}")
        launcher_class = self.classes / f"{LAUNCHER}.class"
        source = HADOOP_SOURCES / f"{LAUNCHER}.java"
        if not launcher_class.is_file() or launcher_class.stat().st_mtime < source.stat().st_mtime:
            javac = shutil.which("javac")
            if not javac:
                raise ConfigError("javac not found: the local platform compiles its Hadoop launcher "
                                  "(Debian package openjdk-17-jdk-headless; make deps installs it)")
            self.classes.mkdir(parents=True, exist_ok=True)
            done = subprocess.run([javac, "--release", "17", "-cp", f"{self.lib}/*", "-d", str(self.classes),
                                   str(source)], capture_output=True, text=True)
            if done.returncode != 0:
                raise ConfigError(f"compiling {source} failed: {done.stderr[-1500:]}")

    def classpath(self) -> str:
        return f"{self.lib}/*:{self.classes}"

    # -- configuration -----------------------------------------------------------
    def write_conf(self) -> None:
        """Write HADOOP_CONF_DIR for clients and the daemons' own folder (rewritten at every start)."""
        p = self.p
        rm = p.resourcemanager_port
        host = self.host
        core = {
            "fs.defaultFS": self.namenode_uri,
            "hadoop.tmp.dir": str(self.state / "hadoop" / "tmp"),
        }
        hdfs = {
            "dfs.replication": replication(p),
            "dfs.permissions.enabled": "true",
            "dfs.webhdfs.enabled": "true",
            "dfs.namenode.rpc-address": f"{self.namenode_host}:{p.namenode_port}",
            "dfs.namenode.http-address": f"{self.namenode_host}:{p.namenode_http_port}",
            # Tests write files with a few-KB block size to check multi-block checksums.
            "dfs.namenode.fs-limits.min-block-size": 1024,
            # After a restart the NameNode leaves safe mode as soon as the blocks are reported.
            "dfs.namenode.safemode.extension": 0,
            # A file closes once its last block is committed, without waiting for the DataNodes'
            # block reports; otherwise the client sleeps 400 ms per close, and Spark writing a
            # partitioned table closes a file per partition (a 150-partition sample: 67 s).
            "dfs.namenode.file.close.num-committed-allowed": 1,
            "dfs.client.block.write.locateFollowingBlock.initial.delay.ms": 50,
        }
        yarn = {
            "yarn.resourcemanager.hostname": host,
            "yarn.resourcemanager.address": f"{host}:{rm}",
            "yarn.resourcemanager.scheduler.address": f"{host}:{rm - 2}",
            "yarn.resourcemanager.resource-tracker.address": f"{host}:{rm - 1}",
            "yarn.resourcemanager.admin.address": f"{host}:{rm + 1}",
            "yarn.resourcemanager.webapp.address": f"{host}:{p.resourcemanager_http_port}",
            "yarn.nodemanager.hostname": host,
            "yarn.nodemanager.address": f"{host}:0",
            "yarn.nodemanager.localizer.address": f"{host}:0",
            "yarn.nodemanager.webapp.address": f"{host}:0",
            "yarn.nodemanager.resource.memory-mb": p.nodemanager_memory_mb,
            # MiniYARNCluster gives its NodeManagers this instead (default 4096).
            "yarn.minicluster.yarn.nodemanager.resource.memory-mb": p.nodemanager_memory_mb,
            "yarn.nodemanager.resource.cpu-vcores": p.nodemanager_vcores,
            "yarn.scheduler.minimum-allocation-mb": 256,
            "yarn.scheduler.maximum-allocation-mb": p.nodemanager_memory_mb,
            "yarn.scheduler.maximum-allocation-vcores": p.nodemanager_vcores,
            # FIFO: no per-queue share of memory for ApplicationMasters (a Spark driver in cluster mode is one).
            "yarn.resourcemanager.scheduler.class":
                "org.apache.hadoop.yarn.server.resourcemanager.scheduler.fifo.FifoScheduler",
            "yarn.nodemanager.vmem-check-enabled": "false",
            "yarn.nodemanager.pmem-check-enabled": "false",
            "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": 99,
            "yarn.nodemanager.env-whitelist": "JAVA_HOME,HADOOP_CONF_DIR,PATH,LANG,TZ",
        }
        hive = {
            "javax.jdo.option.ConnectionURL": self.metastore_url,
            "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.ClientDriver",
            "hive.metastore.warehouse.dir": f"{self.namenode_uri}{WAREHOUSE}",
            "datanucleus.schema.autoCreateAll": "true",
            "hive.metastore.schema.verification": "false",
        }
        if self.listen != host:
            # Listening on another address than the one clients are told (0.0.0.0 in a container on a
            # bridge network): the daemons bind there, DataNodes listen on it and give out the host name.
            hdfs.update({"dfs.namenode.rpc-bind-host": self.listen, "dfs.namenode.http-bind-host": self.listen,
                         "dfs.datanode.address": f"{self.listen}:0", "dfs.datanode.http.address": f"{self.listen}:0",
                         "dfs.datanode.ipc.address": f"{self.listen}:0", "dfs.datanode.hostname": host,
                         "dfs.client.use.datanode.hostname": "true"})
            yarn.update({"yarn.resourcemanager.bind-host": self.listen, "yarn.nodemanager.bind-host": self.listen})
        daemons = {
            "mediation.local.datanodes": p.datanodes,
            "mediation.local.datanode.configured-address": str(self.listen != host).lower(),
            "mediation.local.namenode.rpc-port": p.namenode_port,
            "mediation.local.namenode.http-port": p.namenode_http_port,
            "mediation.local.nodemanagers": 1,
        }
        for folder in (self.conf_dir, self.daemon_conf_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for name, props in (("core-site.xml", core), ("hdfs-site.xml", hdfs), ("yarn-site.xml", yarn)):
                _write_xml(folder / name, props)
        _write_xml(self.conf_dir / "hive-site.xml", hive)
        _write_xml(self.daemon_conf_dir / "local-daemons.xml", daemons)

    # -- commands ----------------------------------------------------------------
    def java(self) -> str:
        found = shutil.which("java")
        if not found:
            raise ConfigError("java not found: install openjdk-17-jre-headless (make deps does)")
        return found

    def hdfs_command(self) -> list[str]:
        data = self.state / "hadoop" / "hdfs"
        data.mkdir(parents=True, exist_ok=True)
        return [self.java(), "-Xmx768m", *_LOG_LEVEL, *self.p.jvm_options, "-cp", self.classpath(), LAUNCHER, "hdfs",
                str(self.daemon_conf_dir), str(data), str(self.ready_file("hdfs")), str(self.p.hdfs_control_port)]

    def yarn_command(self) -> list[str]:
        return [self.java(), "-Xmx768m", *_LOG_LEVEL, *self.p.jvm_options, "-cp", self.classpath(), LAUNCHER, "yarn",
                str(self.daemon_conf_dir), str(self.yarn_dir()), str(self.ready_file("yarn"))]

    def yarn_dir(self) -> Path:
        folder = self.state / "hadoop" / "yarn"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def metastore_command(self) -> list[str]:
        home = self.state / "metastore"
        home.mkdir(parents=True, exist_ok=True)
        jars = ":".join(str(self.lib / f"{name}-10.16.1.1.jar") for name in ("derby", "derbynet", "derbyshared", "derbytools"))
        return [self.java(), "-Xmx256m", f"-Dderby.system.home={home}", *self.p.jvm_options, "-cp", jars,
                "org.apache.derby.drda.NetworkServerControl", "start", "-h", "127.0.0.1", "-p", str(self.p.metastore_port)]

    def ready_file(self, kind: str) -> Path:
        return self.state / "run" / f"{kind}.ready.json"

    def daemon_env(self) -> dict[str, str]:
        java_home = Path(self.java()).resolve().parent.parent
        return dict(os.environ, JAVA_HOME=str(java_home), HADOOP_CONF_DIR=str(self.conf_dir))

    # -- readiness ---------------------------------------------------------------
    def hdfs_ready(self) -> str | None:
        """None once the NameNode is out of safe mode with every DataNode live; else what is missing."""
        if not self.ready_file("hdfs").exists():
            return "the HDFS launcher has not reported ready"
        try:
            beans = _get_json(f"http://{self.namenode_host}:{self.p.namenode_http_port}/jmx"
                              f"?qry=Hadoop:service=NameNode,name=FSNamesystemState")["beans"]
        except (OSError, ValueError, KeyError) as e:
            return f"NameNode JMX: {e}"
        state = beans[0] if beans else {}
        if state.get("FSState") != "Operational":
            return f"NameNode state {state.get('FSState')!r} (safe mode)"
        if state.get("NumLiveDataNodes", 0) < self.p.datanodes:
            return f"{state.get('NumLiveDataNodes', 0)} of {self.p.datanodes} DataNodes live"
        return None

    def yarn_ready(self) -> str | None:
        """None once a NodeManager is registered with the ResourceManager; else what is missing."""
        try:
            metrics = _get_json(f"{self.resourcemanager_url}/metrics")["clusterMetrics"]
        except (OSError, ValueError, KeyError) as e:
            return f"ResourceManager REST: {e}"
        if metrics.get("activeNodes", 0) < 1:
            return "no NodeManager registered with the ResourceManager yet"
        return None

    def fs_shell(self, *args: str, user: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        """Hadoop's own client (``FsShell``: what ``hdfs dfs`` runs) on the local HDFS, as ``user``."""
        env = dict(self.daemon_env(), HADOOP_USER_NAME=user or _superuser())
        # HADOOP_CONF_DIR first on the class path, as Hadoop's own scripts put it.
        done = subprocess.run([self.java(), "-Xmx256m", *self.p.jvm_options, "-cp", f"{self.conf_dir}:{self.lib}/*",
                               "-Dorg.slf4j.simpleLogger.defaultLogLevel=error", "org.apache.hadoop.fs.FsShell", *args],
                              capture_output=True, env=env, timeout=timeout)
        if check and done.returncode != 0:
            raise ConnectionFailed(f"hdfs dfs {' '.join(args)}: exit {done.returncode}: "
                                   f"{done.stderr.decode(errors='replace')[-1000:]}")
        return done

    def prepare_hdfs(self, user: str) -> None:
        """The folders the embedded config writes to, owned by ``user`` (not the superuser: permissions apply)."""
        self.fs_shell("-mkdir", "-p", "/backup/customers", "/data/mnaas", "/tmp", WAREHOUSE)
        self.fs_shell("-chmod", "1777", "/tmp")
        self.fs_shell("-chown", "-R", user, "/backup", "/data")

    def control(self, action: str) -> dict:
        """POST a control action to the HDFS JVM (``namenode/stop``, ``datanode/1/start``...); its new state."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.p.hdfs_control_port}/{action}", data=b"",
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=180) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            raise ConnectionFailed(f"local HDFS control {action}: {e.code} {e.read()[:500]!r}") from e


def _superuser() -> str:
    """Who started the NameNode: HDFS's superuser (HADOOP_USER_NAME if set, as Hadoop's own login reads it)."""
    import getpass

    return os.environ.get("HADOOP_USER_NAME") or getpass.getuser()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def _write_xml(path: Path, props: dict) -> None:
    lines = ['<?xml version="1.0"?>', "<!-- written by local_platform/hadoop.py at platform up; edits are lost -->",
             "<configuration>"]
    for key, value in props.items():
        lines.append(f"  <property><name>{escape(key)}</name><value>{escape(str(value))}</value></property>")
    lines.append("</configuration>\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


# -- the Hadoop services of docker-compose.yml ------------------------------------------------------
_PORT_OPTIONS = ("namenode_port", "namenode_http_port", "hdfs_control_port", "datanodes", "resourcemanager_port",
                 "resourcemanager_http_port", "nodemanager_memory_mb", "nodemanager_vcores", "hdfs_user")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m local_platform.hadoop",
        description="The local platform's HDFS or YARN in the foreground (the Hadoop services of docker-compose.yml), "
                    "their readiness (the services' health checks), or the host-side fetch of the jars into a build context.")
    ap.add_argument("action", choices=("install", "hdfs", "yarn", "ready"),
                    help="install: fetch the jars and compile the launcher into --home (Maven; on the host); "
                         "hdfs / yarn: run the daemons until stopped; ready: exit 0 once --service is ready")
    ap.add_argument("--home", type=Path, required=True, help="lib/ (jars) and classes/ (the compiled launcher)")
    ap.add_argument("--state", type=Path, help="data, configuration and ready files (a volume in a container)")
    ap.add_argument("--service", choices=("hdfs", "yarn"), help="with ready: which service")
    ap.add_argument("--host", default="127.0.0.1", help="the address clients are given (default 127.0.0.1)")
    ap.add_argument("--listen", help="the address the daemons bind to (default: --host)")
    ap.add_argument("--namenode-host", help="where YARN finds the NameNode (default: --host)")
    defaults = PlatformSettings()
    for name in _PORT_OPTIONS:
        default = getattr(defaults, name)
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        help=f"platform.{name} (default {default})")
    ap.add_argument("--jvm-option", dest="jvm_options", action="append", default=[], metavar="=-X...",
                    help="platform.jvm_options: one more option of the daemons' JVM, spelled --jvm-option=-XX:... "
                         "(with '=': the value starts with a dash); repeat for several")
    return ap


def _prepared_file(h: LocalHadoop) -> Path:
    """Written once the HDFS folders the config writes to exist with their owner (part of hdfs's readiness)."""
    return h.state / "run" / "hdfs.prepared"


def health_file(h: LocalHadoop, kind: str) -> Path:
    """``ready`` or what is missing, rewritten every few seconds by the launcher (deploy/hadoop-health.sh reads it)."""
    return h.state / "run" / f"{kind}.health"


_FOLDERS_PENDING = "HDFS folders not made yet"


def _missing(h: LocalHadoop, kind: str) -> str | None:
    """What the service still lacks to be ready (the daemons' own answers, then HDFS's folders), or None."""
    missing = h.hdfs_ready() if kind == "hdfs" else h.yarn_ready()
    if missing is None and kind == "hdfs" and not _prepared_file(h).exists():
        missing = _FOLDERS_PENDING
    return missing


def _run_foreground(h: LocalHadoop, kind: str, every: float = 3.0) -> int:
    """Run one daemon JVM until it exits; TERM/INT go to it.  Meanwhile ask the daemons every ``every`` seconds
    whether they are ready and write the answer to the health file; the first time HDFS is ready, make its folders."""
    if not h.installed():
        raise ConfigError(f"no Hadoop jars or launcher under {h.home}: fetch them on the host "
                          "(python -m local_platform.hadoop install --home <build context>/.compose/hadoop; make wheelhouse)")
    h.write_conf()
    (h.state / "run").mkdir(parents=True, exist_ok=True)
    # What the previous run left on the volume must not make this one look ready.
    for stale in (h.ready_file(kind), _prepared_file(h), health_file(h, kind)):
        stale.unlink(missing_ok=True)
    argv = h.hdfs_command() if kind == "hdfs" else h.yarn_command()
    proc = subprocess.Popen(argv, env=h.daemon_env(), cwd=h.yarn_dir() if kind == "yarn" else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    health, said = health_file(h, kind), None
    while True:
        try:
            return proc.wait(every)
        except subprocess.TimeoutExpired:
            pass
        missing = _missing(h, kind)
        if missing == _FOLDERS_PENDING:
            try:
                h.prepare_hdfs(h.p.hdfs_user)
                _prepared_file(h).write_text(h.p.hdfs_user)
                missing = None
            except (ConnectionFailed, subprocess.TimeoutExpired) as e:  # said in the health file, tried again
                missing = f"making the HDFS folders failed: {e}"
        state = "ready" if missing is None else f"not ready: {missing}"
        tmp = health.with_suffix(".tmp")
        tmp.write_text(state + "\n")
        tmp.replace(health)
        if state != said:
            print(f"{kind}: {state}", flush=True)
            said = state


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        p = PlatformSettings(jvm_options=args.jvm_options, **{name: getattr(args, name) for name in _PORT_OPTIONS})
    except ValidationError as e:
        raise SystemExit("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
    if args.action != "install" and args.state is None:
        raise SystemExit(f"{args.action} needs --state")
    h = LocalHadoop(p, (args.state or args.home).resolve(), args.home.resolve(), host=args.host, listen=args.listen,
                    namenode_host=args.namenode_host)
    if args.action == "install":
        h.ensure_installed()
        return 0
    if args.action == "ready":
        if args.service is None:
            raise SystemExit("ready needs --service hdfs|yarn")
        missing = _missing(h, args.service)
        if missing is not None:
            print(f"{args.service} not ready: {missing}")
            return 1
        return 0
    return _run_foreground(h, args.action)


if __name__ == "__main__":
    sys.exit(main())
