"""Session fixtures: a test config, the local platform on test ports, real Celery workers.

The test config is written before anything imports ``workers.app`` (which reads
BACKUP_CONFIG at import), with its own state folder, its own ports (so a demo
platform can run beside the tests), Redis database 9 and short retry/lock
timings so failure paths finish in seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import kombu.exceptions
import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(tempfile.mkdtemp(prefix="mb-test-"))
REMOTE_DIR = str(STATE / "edge")
# Two test sessions can run side by side with different MB_TEST_PORT_OFFSET (make test runs a second one: the
# Makefile's SIDE_SUITE), each with its own services, Redis included: a session stops the Redis it started when it
# ends, which must not be the other session's.
PORT_OFFSET = int(os.environ.get("MB_TEST_PORT_OFFSET", "0"))
TEST_REDIS_DB = int(os.environ.get("MB_TEST_REDIS_DB", "9"))
REDIS_PORT = 6379 + PORT_OFFSET
HIVE_PORT, CONNECT_PORT, UI_PORT = 11000 + PORT_OFFSET, 16002 + PORT_OFFSET, 4140 + PORT_OFFSET
SSH_PORT, SMTP_PORT, TICKET_PORT = 2322 + PORT_OFFSET, 8125 + PORT_OFFSET, 8189 + PORT_OFFSET
# Real HDFS and YARN (local_platform/hadoop.py): NameNode RPC and HTTP (WebHDFS), the HDFS JVM's control port,
# ResourceManager client port (scheduler, tracker and admin on 18030, 18031 and 18033) and REST port.
METASTORE_PORT, NAMENODE_PORT, NAMENODE_HTTP_PORT = 11527 + PORT_OFFSET, 18020 + PORT_OFFSET, 19870 + PORT_OFFSET
HDFS_CONTROL_PORT, RM_PORT, RM_HTTP_PORT = 19879 + PORT_OFFSET, 18032 + PORT_OFFSET, 18088 + PORT_OFFSET
NAMENODE_URI = f"hdfs://127.0.0.1:{NAMENODE_PORT}"
WEBHDFS = f"webhdfs://127.0.0.1:{NAMENODE_HTTP_PORT}"

TEST_CONFIG = {
    "base_dir": str(ROOT),
    "redis": {"url": f"redis://127.0.0.1:{REDIS_PORT}/{TEST_REDIS_DB}", "key_prefix": "mbtest"},
    # Time limits well above any phase of the tests: in a local run like CI a 60-row count load took 48 s of a
    # Spark server starved by the compose build beside the session, and a 55 s soft limit failed it (no test relies on
    # them firing: those that do set their own).
    "celery": {"task_time_limit": 180, "task_soft_time_limit": 170, "visibility_timeout": 65,
               "max_deliveries": 3, "worker_concurrency": 2},
    "retry": {"max_retries": 2, "backoff": 1, "backoff_max": 2},
    "lock": {"ttl": 10, "renew_every": 2},
    # The beat processes of the operations tests must not fail other tests' jobs behind their backs:
    # the stall check runs when a test sends it (tests/integration/test_stale_and_stalls.py).
    "stall": {"check_every": 3600},
    "hive": {"host": "127.0.0.1", "port": HIVE_PORT, "auth_mechanism": "NOSASL", "fetch_rows": 5000},
    "sftp": {"host": "127.0.0.1", "port": SSH_PORT, "key_file": str(STATE / "platform/ssh/client_key"),
             "known_hosts": str(STATE / "platform/ssh/known_hosts"), "remote_dir": REMOTE_DIR,
             "connect_timeout": 5},
    "smtp": {"host": "127.0.0.1", "port": SMTP_PORT},
    "ticket": {"url": f"http://127.0.0.1:{TICKET_PORT}/tickets"},
    "edge_export": {"export_dir": str(STATE / "exports"), "months": 5},
    # customer-files: local primaries; secondaries on the platform's sshd, delta's on a WebHDFS test server
    # the integration tests start (and stop, to make it unreachable) on port 14870 + offset.
    "customer_files": {
        "source_dirs": [str(STATE / "customer-files" / "incoming")],
        "customers": {c: {"primary": str(STATE / "customer-files" / "primary" / c),
                          "secondary": f"webhdfs://127.0.0.1:{14870 + PORT_OFFSET}/customer-files/{c}" if c == "delta"
                          else f"sftp://127.0.0.1:{SSH_PORT}{STATE}/customer-files/edge/{c}"}
                      for c in ("alpha", "beta gmbh", "česká-data", "delta", "echo")},
        "domains": {"traffic": ["*traffic*.csv", "*traffic*.txt"], "activations": ["*activation*.csv"],
                    "actives": ["*actives*.csv"], "tolling": ["*tolling*.csv", "TOLL_[0-9][0-9]*.dat"]},
        "max_files_per_run": 1000, "settle_seconds": 30,
        "staging_table": "mnaas_test.cf_inter_record_count", "final_table": "mnaas_test.cf_records_count",
        "status_flag": str(STATE / "customer-files" / "status" / "MNAAS_backup_files_process.status"),
        "manifest_dir": str(STATE / "customer-files" / "manifests"),
        # The count rows go to the Spark server as a file on the test platform's HDFS (as config/local.yaml does).
        "count_load_folder": f"hdfs://mediation@127.0.0.1:{NAMENODE_HTTP_PORT}/backup/customers/.counts",
        "count_load_server_path": "hdfs:///backup/customers/.counts",
    },
    "spark": {"remote": f"sc://127.0.0.1:{CONNECT_PORT}"},
    "restore_edge_export": {"staging_dir": str(STATE / "restore")},
    # Retention only for the tables of tests/integration/test_retention.py: no other test's runs are pruned.
    "retention": {"edge_export": {"targets": {"mnaas_test.ret_rules": {"keep_runs": 2, "keep_days": 10},
                                              "mnaas_test.ret_auto": {"keep_runs": 1}}}},
    "platform": {"state_dir": str(STATE / "platform"), "redis_port": REDIS_PORT, "hive_port": HIVE_PORT,
                 "connect_port": CONNECT_PORT,
                 "spark_ui_port": UI_PORT, "ssh_port": SSH_PORT, "smtp_port": SMTP_PORT,
                 "ticket_port": TICKET_PORT, "metastore_port": METASTORE_PORT, "namenode_port": NAMENODE_PORT,
                 "namenode_http_port": NAMENODE_HTTP_PORT, "hdfs_control_port": HDFS_CONTROL_PORT,
                 "resourcemanager_port": RM_PORT, "resourcemanager_http_port": RM_HTTP_PORT,
                 # Hadoop's jars are fetched once into the checkout's platform folder, shared by every session.
                 "hadoop_home": str(ROOT / ".platform" / "hadoop"),
                 # C1 only and the serial collector: the tests' statements are short, and on 2 cores beside the
                 # compose test the JIT's and GC's threads competed with them (test_customer_files.py alone:
                 # 251 s and 370 CPU-s with the defaults, 198 s and 219 CPU-s with these).
                 "jvm_options": ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]},
}


def write_config(path: Path, overrides: dict | None = None) -> Path:
    """Write the test config (optionally changed) to ``path``."""
    from config.settings import _merge

    path.write_text(yaml.safe_dump(_merge(TEST_CONFIG, overrides or {})))
    return path


CONFIG_PATH = STATE / "test.yaml"
sys.path.insert(0, str(ROOT))
write_config(CONFIG_PATH)
os.environ["BACKUP_CONFIG"] = str(CONFIG_PATH)


@pytest.fixture(scope="session")
def settings():
    from config.settings import load_settings

    return load_settings(CONFIG_PATH)


def _start_redis(settings) -> dict:
    from local_platform.services import LocalPlatform

    _stop_leftovers()
    return LocalPlatform(settings).up(only=["redis"], timeout=60)


class EarlyStart:
    """Redis and the local platform started in a thread as soon as the session has collected its tests.

    The platform takes a minute or two to start (JVMs on 2 cores), and the unit tests, which run first
    (``pytest_collection_modifyitems``), need none of it but Redis: the two overlap.  The ``redis_server``
    and ``platform`` fixtures each wait for their own stage only, and take its outcome (or its error, raised
    again there); a session that selects no test needing the platform starts nothing early.
    """

    thread = None
    outcome: dict = {}
    ended: dict = {}
    taken: set = set()

    @classmethod
    def start(cls) -> None:
        import threading

        cls.ended = {"redis": threading.Event(), "platform": threading.Event()}

        def run():
            from config.settings import load_settings

            stage = "redis"
            try:
                settings = load_settings(CONFIG_PATH)
                cls.outcome["redis"] = _start_redis(settings)
                cls.ended["redis"].set()
                stage = "platform"
                cls.outcome["platform"] = _start_platform(settings)
            except BaseException as e:  # raised again by the fixture that needs what failed
                cls.outcome["error"] = (stage, e)
            finally:
                for event in cls.ended.values():
                    event.set()
        cls.thread = threading.Thread(target=run, name="early platform start", daemon=True)
        cls.thread.start()

    @classmethod
    def take(cls, what: str):
        """The early start's result for ``what`` ("redis" or "platform"), None if nothing was started early."""
        if cls.thread is None:
            return None
        cls.ended[what].wait()
        cls.taken.add(what)
        if what in cls.outcome:
            return cls.outcome[what]
        stage, error = cls.outcome["error"]
        raise RuntimeError(f"starting {stage} early failed: {error!r}") from error


def pytest_collection_modifyitems(session, config, items):
    """Unit tests first (they need no service), then the rest in their usual order, then the tests of background
    scenarios (``tests/background.py``: a test waits for its scenario, which started with the session, so the
    later it runs the less of the session it holds up), and last the tests marked ``clock`` (they measure elapsed
    time, which the platform's start and the compose build beside the session would skew); start Redis and the
    platform in the background now if any selected test needs the platform."""
    unit = str(ROOT / "tests" / "unit")

    def place(item) -> int:
        if item.get_closest_marker("clock"):
            return 3
        if getattr(getattr(item, "function", None), "background", None) is not None:
            return 2
        return 0 if str(item.path).startswith(unit) else 1
    items.sort(key=place)  # stable: modules stay in order
    if "yarn" in SESSION_SERVICES and not any("yarn_cluster" in item.fixturenames for item in items):
        SESSION_SERVICES.remove("yarn")
    if not config.option.collectonly and any("platform" in item.fixturenames for item in items):
        EarlyStart.start()


def pytest_sessionfinish(session, exitstatus):
    """A session that ended before any test took the early-started platform (``-x`` after a unit test failed,
    an interrupt) stops it here: the fixtures' teardowns never run for what they never set up.  Then the session's
    state folder (``STATE``: the platform's data and logs, about 0.5 GB after the integration tests) is removed if
    every test passed, and kept for the post-mortem otherwise (or with ``MB_TEST_KEEP_STATE=1``): before, every
    session left one behind in the temp folder."""
    try:
        _stop_early_started()
    finally:
        if exitstatus == 0 and not os.environ.get("MB_TEST_KEEP_STATE"):
            shutil.rmtree(STATE, ignore_errors=True)
        elif STATE.exists():
            session.config.get_terminal_writer().line(f"test state (platform data and logs) kept in {STATE}")


def _stop_early_started() -> None:
    from config.settings import load_settings
    from local_platform.services import LocalPlatform

    if EarlyStart.thread is None:
        return
    EarlyStart.thread.join(300)
    settings = load_settings(CONFIG_PATH)
    if "platform" not in EarlyStart.taken and "platform" in EarlyStart.outcome:
        LocalPlatform(settings).down(only=PLATFORM_SERVICES)
        LEDGER.unlink(missing_ok=True)
    if "redis" not in EarlyStart.taken and EarlyStart.outcome.get("redis", {}).get("redis") == "started":
        LocalPlatform(settings).down(only=["redis"])


@pytest.fixture(scope="session")
def redis_server(settings):
    """Redis for the whole session: the platform's, started here if nothing listens yet (stopped at the end)."""
    from local_platform.services import LocalPlatform

    report = EarlyStart.take("redis") or _start_redis(settings)
    yield
    if report.get("redis") == "started":
        LocalPlatform(settings).down(only=["redis"])


@pytest.fixture(scope="session")
def redis_client(settings, redis_server):
    from backup.resources import redis_client as make

    client = make(settings)
    client.ping()
    client.flushdb()  # database 9 belongs to the tests
    return client


# A Redis Sentinel group of the session's own (tests/integration/test_redis_sentinel.py): the primary on this port,
# its replica and three sentinels on the next four.
SENTINEL_PORT = 26400 + PORT_OFFSET


@pytest.fixture(scope="session")
def sentinel_group():
    """A Redis primary, a replica and three sentinels (bench.faultkit.SentinelGroup), ready when yielded."""
    from bench.faultkit import SentinelGroup

    group = SentinelGroup(SENTINEL_PORT, STATE / "sentinel", db=TEST_REDIS_DB, pid_dir=STATE / "platform" / "run")
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def res(settings, redis_client):
    from backup.resources import Resources

    return Resources(settings, _redis=redis_client)


# Where the services and workers of the test session with this port offset keep their pidfiles, noted outside
# the session's temporary folder: the next session with the same offset stops what a crashed one left running.
LEDGER = ROOT / ".platform" / "test-sessions" / f"offset-{PORT_OFFSET}.json"


def _stop_leftovers() -> None:
    """Stop what an earlier session with this port offset started and never stopped (it crashed).

    The ledger names that session's run folder; every ``*.pid`` there (platform services and
    workers, kept current by every start and stop) is a process group to end.  Redis is left
    alone: it is shared by every session and the demo platform.
    """
    import json

    if not LEDGER.exists():
        return
    run_dir = Path(json.loads(LEDGER.read_text())["run_dir"])
    for pidfile in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
        if pidfile.stem == "redis":
            continue
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):  # gone with its process (sshd removes its own), or unreadable
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                continue
            break
        print(f"stopped {pidfile.stem} (pid {pid}) left running by a crashed test session", file=sys.stderr)
        pidfile.unlink(missing_ok=True)
    LEDGER.unlink()


PLATFORM_SERVICES = ["metastore", "hdfs", "yarn", "spark", "sshd", "sinks"]
#: what the session starts with the platform: YARN only if a selected test needs it (``yarn_cluster``), for the rest
#: its two JVMs' start and their heartbeats (4-5 CPU-s a minute) only took CPU from the tests on 2 cores
SESSION_SERVICES = list(PLATFORM_SERVICES)


def _start_platform(settings, services: list[str] | None = None) -> dict:
    """Start the platform's ``services`` (default: the session's, the first start; later, one more service beside
    them); a service found already listening on a test port that no session recorded is an error, not something to
    reuse: it may run with another session's keys and folders (set MB_TEST_PORT_OFFSET).  On any failure what this
    call started is stopped again (the services already running stay)."""
    import json

    from local_platform.services import LocalPlatform

    plat = LocalPlatform(settings)
    first = services is None
    if first:  # recorded before anything starts: a session killed while starting is cleaned up by the next one
        LEDGER.parent.mkdir(parents=True, exist_ok=True)
        LEDGER.write_text(json.dumps({"run_dir": str(plat.run_dir)}))
    wanted = SESSION_SERVICES if first else services
    try:
        report = plat.up(only=wanted, timeout=240)
        foreign = [name for name, state in report.items() if state.startswith("reused")]
        if foreign:
            raise RuntimeError(f"test ports of {', '.join(foreign)} are taken by processes this session did not "
                               f"start (another test session, or one that crashed before this check existed): stop "
                               f"them or set MB_TEST_PORT_OFFSET")
    except BaseException:
        plat.down(only=wanted)  # what this session started (its own run folder), not the foreign ones
        if first:
            LEDGER.unlink(missing_ok=True)
        raise
    return report


@pytest.fixture(scope="session")
def platform(settings, redis_server):
    """The local platform on test ports, started once (early, in the background, when the session has tests that
    need it: ``EarlyStart``), stopped at the end (only what it started)."""
    from local_platform.services import LocalPlatform

    if EarlyStart.take("platform") is None:
        _start_platform(settings)
    plat = LocalPlatform(settings)
    yield plat
    plat.down(only=PLATFORM_SERVICES)
    LEDGER.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def yarn_cluster(platform, settings):
    """The platform's YARN: started with the rest when the session selected a test needing it (the early start),
    else here, once (a no-op when it runs); stopped with the platform."""
    if "yarn" not in SESSION_SERVICES:
        _start_platform(settings, ["yarn"])
    return platform


class WorkerProc:
    """A real ``celery worker`` subprocess in its own process group."""

    started: list["WorkerProc"] = []  # every worker of the session, killed at its end whatever a test did

    def __init__(self, config: Path, name: str, queues: str = "default,io,spark", concurrency: int = 2, app=None,
                 app_module: str = "workers.app"):
        self.config, self.name, self.queues, self.concurrency = config, name, queues, concurrency
        self.app = app  # a Celery app on the worker's broker (default: the test config's)
        self.app_module = app_module  # what ``celery -A`` loads
        self.proc: subprocess.Popen | None = None
        self.log = STATE / f"worker-{name}.log"

    def start(self, timeout: float = 60) -> "WorkerProc":
        env = dict(os.environ, BACKUP_CONFIG=str(self.config), PYTHONPATH=str(ROOT))
        # --without-mingle: the start-up exchange of revoked task ids with other workers (this project revokes
        # no Celery task) costs a second per start, about 20 starts a session.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app_module, "worker", "-Q", self.queues, "-E",
             "--without-mingle", "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        WorkerProc.started.append(self)
        run_dir = STATE / "platform" / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"worker-{self.name}.pid").write_text(str(self.proc.pid))
        from workers.app import app as default_app

        app = self.app or default_app
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                replies = app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5)
            except (OSError, redis.ConnectionError, kombu.exceptions.OperationalError):
                replies = None  # a pooled connection to a Redis restarted since: the next call reconnects
            if replies:
                return self
        raise RuntimeError(f"worker {self.name} did not answer ping within {timeout}s")

    def dump_stacks(self, timeout: float = 10) -> str:
        """Every thread's stack in the worker's main process, as Celery writes it to the log on SIGUSR1 (its cry
        handler): the evidence a test keeps when the worker failed to do something in time.  Python runs the
        handler between bytecodes, so a main process blocked in a system call (``epoll``, ``recv``) answers too;
        one stuck inside a C extension does not, and the text says so."""
        if not self.proc or self.proc.poll() is not None:
            return f"worker {self.name} is not running"
        start = self.log.stat().st_size

        def written() -> str:
            with open(self.log, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            time.sleep(0.1)
            before, text = text, written()
            # the handler writes every thread in one go: done once the main thread's part is there and the log
            # stopped growing
            if text == before and "LOCAL VARIABLES" in text.partition("MainThread")[2]:
                return text
        return text or f"worker {self.name} wrote no stacks within {timeout}s of SIGUSR1 (blocked outside Python?)"

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Warm shutdown, SIGKILL if it hangs."""
        WorkerProc.stop_all([self])

    @staticmethod
    def stop_all(workers: list["WorkerProc"], timeout: float = 30) -> None:
        """Warm shutdown of every worker at once (each takes a second or two), SIGKILL for those that hang."""
        running = [w for w in workers if w.proc and w.proc.poll() is None]
        for w in running:
            os.killpg(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in running:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()


@pytest.fixture(scope="session")
def worker(platform, redis_client):
    w = WorkerProc(CONFIG_PATH, "main").start()
    yield w
    WorkerProc.stop_all(WorkerProc.started)


@pytest.fixture(scope="session")
def celery_app():
    from workers.app import app

    return app
