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
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

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

    def __init__(self, p: PlatformSettings, state: Path, home: Path | None = None):
        self.p = p
        self.state = state
        self.home = home or state / "hadoop"  # jars and launcher: shareable between state folders
        self.lib = self.home / "lib"
        self.classes = self.home / "classes"
        self.conf_dir = state / "hadoop" / "conf"
        self.daemon_conf_dir = state / "hadoop" / "daemon-conf"

    # -- URLs ------------------------------------------------------------------
    @property
    def namenode_uri(self) -> str:
        return f"hdfs://127.0.0.1:{self.p.namenode_port}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://127.0.0.1:{self.p.namenode_http_port}/webhdfs/v1"

    @property
    def resourcemanager_url(self) -> str:
        return f"http://127.0.0.1:{self.p.resourcemanager_http_port}/ws/v1/cluster"

    @property
    def metastore_url(self) -> str:
        return f"jdbc:derby://127.0.0.1:{self.p.metastore_port}/metastore_db;create=true"

    @property
    def derby_client_jar(self) -> Path:
        return self.lib / DERBY_CLIENT_JAR

    # -- install -----------------------------------------------------------------
    def ensure_installed(self) -> None:
        """Fetch the jars from Maven Central and compile the launcher, each only when missing (cost: ~10 s once)."""
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
        core = {
            "fs.defaultFS": self.namenode_uri,
            "hadoop.tmp.dir": str(self.state / "hadoop" / "tmp"),
        }
        hdfs = {
            "dfs.replication": replication(p),
            "dfs.permissions.enabled": "true",
            "dfs.webhdfs.enabled": "true",
            "dfs.namenode.rpc-address": f"127.0.0.1:{p.namenode_port}",
            "dfs.namenode.http-address": f"127.0.0.1:{p.namenode_http_port}",
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
            "yarn.resourcemanager.hostname": "127.0.0.1",
            "yarn.resourcemanager.address": f"127.0.0.1:{rm}",
            "yarn.resourcemanager.scheduler.address": f"127.0.0.1:{rm - 2}",
            "yarn.resourcemanager.resource-tracker.address": f"127.0.0.1:{rm - 1}",
            "yarn.resourcemanager.admin.address": f"127.0.0.1:{rm + 1}",
            "yarn.resourcemanager.webapp.address": f"127.0.0.1:{p.resourcemanager_http_port}",
            "yarn.nodemanager.hostname": "127.0.0.1",
            "yarn.nodemanager.address": "127.0.0.1:0",
            "yarn.nodemanager.localizer.address": "127.0.0.1:0",
            "yarn.nodemanager.webapp.address": "127.0.0.1:0",
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
        daemons = {
            "mediation.local.datanodes": p.datanodes,
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
        return [self.java(), "-Xmx768m", *_LOG_LEVEL, "-cp", self.classpath(), LAUNCHER, "hdfs", str(self.daemon_conf_dir),
                str(data), str(self.ready_file("hdfs")), str(self.p.hdfs_control_port)]

    def yarn_command(self) -> list[str]:
        return [self.java(), "-Xmx768m", *_LOG_LEVEL, "-cp", self.classpath(), LAUNCHER, "yarn", str(self.daemon_conf_dir),
                str(self.yarn_dir()), str(self.ready_file("yarn"))]

    def yarn_dir(self) -> Path:
        folder = self.state / "hadoop" / "yarn"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def metastore_command(self) -> list[str]:
        home = self.state / "metastore"
        home.mkdir(parents=True, exist_ok=True)
        jars = ":".join(str(self.lib / f"{name}-10.16.1.1.jar") for name in ("derby", "derbynet", "derbyshared", "derbytools"))
        return [self.java(), "-Xmx256m", f"-Dderby.system.home={home}", "-cp", jars,
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
            beans = _get_json(f"http://127.0.0.1:{self.p.namenode_http_port}/jmx"
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
        done = subprocess.run([self.java(), "-Xmx256m", "-cp", f"{self.conf_dir}:{self.lib}/*",
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
    """Who started the NameNode: HDFS's superuser."""
    import getpass

    return getpass.getuser()


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
