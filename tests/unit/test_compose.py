"""docker-compose.yml, deploy/compose.test.yaml, the Dockerfile and the locks, checked structurally.

(tests/compose/test_stack.py runs the stack for real; these catch a broken file in a second.)

Every service has a healthcheck; every project-image command and healthcheck
starts an entry point that exists here (a backupctl subcommand whose arguments
parse, a module, a file shipped in the image, a console script of the venv);
every ``${VAR}`` is documented; Redis runs with a password, ``noeviction`` and
persistence; one worker per queue and a single beat.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from config.settings import SECRET_ENV, load_settings
from tests.conftest import ROOT

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
OVERRIDE_TEXT = (ROOT / "deploy" / "compose.test.yaml").read_text()
OVERRIDE = yaml.safe_load(OVERRIDE_TEXT)
BUILT = {name for name, svc in SERVICES.items() if isinstance(svc.get("build"), dict)
         and svc["build"]["context"] == "."}
PROJECT = {name for name in BUILT if SERVICES[name]["build"]["target"] in ("app", "tryout")}
THIRD_PARTY = {"redis"}  # Debian's redis-server, built from the Dockerfile's target redis
CONFIG_IN_CONTAINER = "/etc/mediation-backup/config.yaml"
VENV_BIN = Path(sys.executable).parent

_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str) -> str:
    """What compose substitutes: the default of ${VAR:-default}, a stand-in value otherwise; $$ is a literal $."""
    def sub(m):
        return m.group(3) if m.group(2) in (":-", "-") else "value"
    return _VAR.sub(sub, value).replace("$$", "$")


def _argv(command) -> list[str]:
    return [_interpolate(str(a)) for a in command] if isinstance(command, list) else shlex.split(
        _interpolate(command))


def _documented_env() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Environment variables of docker-compose.yml", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", section, flags=re.M))


def _check_entry_point(argv: list[str], where: str) -> None:
    exe = argv[0]
    if exe == "backupctl":
        from workers.cli import build_parser

        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"{where}: backupctl {argv[1:]} does not parse (exit {e.code})")
    elif exe == "python" and argv[1] == "-m":
        spec = importlib.util.find_spec(argv[2])
        assert spec and spec.origin and Path(spec.origin).is_relative_to(ROOT), f"{where}: no module {argv[2]}"
    elif exe == "python" and argv[1] == "-c":
        compile(argv[2], where, "exec")
    elif exe == "celery":
        assert argv[1:3] == ["-A", "workers.app"] and importlib.util.find_spec("workers.app"), where
        assert (VENV_BIN / "celery").exists()
    elif exe.startswith("/app/"):
        shipped = ROOT / exe[len("/app/"):]
        assert shipped.is_file() and os.access(shipped, os.X_OK), f"{where}: {shipped} missing or not executable"
        top = exe[len("/app/"):].split("/")[0]
        rel = exe[len("/app/"):]
        assert re.search(rf"^COPY ({top}|{re.escape(rel)}) ", (ROOT / "Dockerfile").read_text(), re.M), f"{where}: {rel} not in image"
    else:
        assert (VENV_BIN / exe).exists(), f"{where}: {exe} is neither a project entry point nor a venv console script"


def test_compose_parses_and_every_service_has_a_healthcheck():
    assert PROJECT | THIRD_PARTY == set(SERVICES)
    for name, svc in SERVICES.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) > 1, f"{name}: no healthcheck"
        assert hc.get("interval") and hc.get("retries"), f"{name}: healthcheck without interval/retries"


@pytest.mark.parametrize("name", sorted(PROJECT))
def test_project_commands_and_healthchecks_start_existing_entry_points(name):
    svc = SERVICES[name]
    _check_entry_point(_argv(svc["command"]), f"{name}.command")
    test = svc["healthcheck"]["test"]
    _check_entry_point(_argv(test[1:]) if test[0] == "CMD" else _argv(test[1]), f"{name}.healthcheck")


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): part for part in parts}


def test_console_script_and_image_build():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'backupctl = "workers.cli:main"' in pyproject
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = _stages()
    # Only the wheelhouse, only the locked artifacts: no index, hashes checked.
    for line in re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", dockerfile):
        assert "--no-index" in line, line
        # the project itself (a local folder, no dependencies) is the one install without hashes
        assert "--require-hashes" in line or " --no-deps --no-build-isolation . " in line, line
    assert "-r /locks/requirements.lock" in stages["venv"]
    assert "pip install -q --no-index --no-deps --no-build-isolation ." in stages["app"]
    assert "requirements-test.lock" not in stages["app"] and "requirements-test.lock" in stages["tryout"]
    assert all(part.split()[0] in ("${BASE_IMAGE}", "os", "app") for part in re.findall(r"^FROM (.*)$", dockerfile, re.M))
    assert list(stages)[-1] == "production" and stages["production"].split()[0] == "app"
    for package in ("backup", "connectors", "storage", "config", "tasks", "workers", "local_platform"):
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), f"{package} not copied into the image"


def test_spark_service_runs_the_local_platform_command():
    argv = _argv(SERVICES["spark"]["command"])
    assert argv[0] == "spark-submit" and argv[-1] == "spark-internal"
    platform_source = (ROOT / "local_platform" / "services.py").read_text()
    assert "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2" in argv
    confs = [argv[i + 1].split("=", 1)[0] for i, a in enumerate(argv) if a == "--conf"]
    assert "spark.plugins" in confs
    for key in confs:
        assert f"{key}=" in platform_source, f"spark.{key} is not set by local_platform/services.py"


def test_every_environment_variable_is_documented():
    used = {m.group(1) for m in _VAR.finditer(COMPOSE_TEXT)}
    undocumented = used - set(SECRET_ENV) - _documented_env()
    assert not undocumented, f"document these in docs/operations.md or SECRET_ENV: {sorted(undocumented)}"
    for name, svc in SERVICES.items():  # $$VAR is read inside the container: it must be set there
        text = yaml.safe_dump({"command": svc.get("command"), "healthcheck": svc["healthcheck"]})
        for var in re.findall(r"\$\$([A-Za-z_][A-Za-z0-9_]*)", text):
            assert var == "HOSTNAME" or var in (svc.get("environment") or {}), f"{name}: ${var} not set"


def test_secrets_only_from_the_environment():
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if key in SECRET_ENV:
                assert _VAR.fullmatch(str(value)), f"{name}: {key} must come from the environment, not the file"
    assert "requirepass" not in " ".join(_argv(SERVICES["redis"]["command"])).split("|", 1)[1]


def test_every_image_is_built_from_the_dockerfile_on_the_host_network():
    assert BUILT == set(SERVICES)
    for name, svc in SERVICES.items():
        assert svc["build"]["network"] == "host" and svc["build"]["target"] in _stages(), name
        assert svc["build"]["args"]["BASE_IMAGE"].startswith("${MB_BASE_IMAGE:-"), name


def test_redis_has_password_noeviction_and_persistence():
    redis = SERVICES["redis"]
    assert redis["build"]["target"] == "redis" and "redis-server" in _stages()["redis"]
    command = " ".join(_argv(redis["command"]))
    assert "requirepass" in command and "$BACKUP_REDIS_PASSWORD" in command
    assert "--maxmemory-policy noeviction" in command and "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_one_worker_per_queue_several_io_processes_and_one_beat():
    queues = {}
    for name in PROJECT:
        argv = _argv(SERVICES[name]["command"])
        if argv[:2] == ["backupctl", "worker"]:
            queue = argv[argv.index("-Q") + 1]
            queues[queue] = (name, int(argv[argv.index("-c") + 1]))
            assert argv[argv.index("-n") + 1] == f"{queue}@%h"
            assert f"--destination {queue}@$$HOSTNAME" in SERVICES[name]["healthcheck"]["test"][1], name
            assert SERVICES[name]["stop_grace_period"], f"{name}: needs time for a warm shutdown"
    assert set(queues) == {"io", "spark", "default"}
    assert queues["io"][1] >= 2
    beats = [n for n in PROJECT if _argv(SERVICES[n]["command"])[:2] == ["backupctl", "beat"]]
    assert beats == ["beat"] and "replicas" not in str(SERVICES["beat"].get("deploy", {}))


def test_project_services_read_the_mounted_config():
    for name in PROJECT - {"spark", "hdfs", "yarn", "edge", "mail"}:
        svc = SERVICES[name]
        assert svc["environment"]["BACKUP_CONFIG"] == CONFIG_IN_CONTAINER
        assert any(str(v).endswith(f":{CONFIG_IN_CONTAINER}:ro") for v in svc["volumes"]), name
    for published in SERVICES["flower"]["ports"] + SERVICES["metrics"]["ports"]:
        assert _interpolate(published).startswith("127.0.0.1:"), "unauthenticated /metrics must not be public"


@pytest.mark.parametrize("name", ["production.example.yaml", "compose.yaml"])
def test_example_configs_validate(name, monkeypatch):
    # Both name a Redis off loopback: loading needs its password in the environment (config/settings.py).
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "example")
    s = load_settings(ROOT / "config" / name)
    assert s.schedules and s.log_format == "json"


def _lock(path: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
            assert m, f"{path.name}: {line!r} is not name==version --hash=sha256:<64 hex>"
            out[m.group(1).lower()] = (m.group(2), m.group(3))
    return out


def _pins(path: Path) -> dict[str, str]:
    return {n.lower(): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", path.read_text(), re.M)}


def test_locks_pin_every_requirement_with_a_hash_and_tests_stay_out_of_the_runtime():
    runtime, test = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-test.txt")
    assert {n: v for n, (v, _) in _lock(ROOT / "requirements.lock").items()} == runtime
    assert {n: v for n, (v, _) in _lock(ROOT / "requirements-test.lock").items()} == test
    assert "-r requirements.txt" in (ROOT / "requirements-test.txt").read_text()
    assert {"pytest", "aiosmtpd"} <= set(test) and not {"pytest", "aiosmtpd", "iniconfig", "pluggy"} & set(runtime)
    build = _pins(ROOT / "deploy" / "build-requirements.txt")
    assert {n: v for n, (v, _) in _lock(ROOT / "deploy" / "build-requirements.lock").items()} == build


def test_test_override_runs_every_service_on_loopback_with_host_networking():
    extra = set(OVERRIDE["services"]) - set(SERVICES)
    assert extra == {"worker-io-2"}
    assert set(OVERRIDE["services"]) >= set(SERVICES), "every service needs network_mode: host"
    for name, svc in OVERRIDE["services"].items():
        assert svc["network_mode"] == "host", name
        text = yaml.safe_dump(svc)
        assert "0.0.0.0" not in text, f"{name} must listen on loopback only"
    used = {m.group(1) for m in _VAR.finditer(OVERRIDE_TEXT)}
    allowed = {"MB_IMAGE", "MB_CONFIG_FILE", "MB_COMPOSE_FILES_DIR", "BACKUP_REDIS_PASSWORD"}
    assert not {v for v in used if not v.startswith("MB_COMPOSE_") or not v.endswith("_PORT")} - allowed
    from tests.compose.test_stack import PORTS
    assert {v for v in used if v.endswith("_PORT")} <= {f"MB_COMPOSE_{k}_PORT" for k in PORTS}
    assert len(set(PORTS.values())) == len(PORTS)


@pytest.mark.parametrize("compose", [COMPOSE, OVERRIDE], ids=["docker-compose.yml", "compose.test.yaml"])
def test_hadoop_services_run_the_local_platform_launcher(compose):
    """hdfs and yarn run local_platform/hadoop.py (the local platform's launcher) on the jars baked into the
    tryout image, with a volume for HDFS's data and a readiness check on the same service, state and ports."""
    from local_platform.hadoop import _parser

    for name in ("hdfs", "yarn"):
        svc = compose["services"][name]
        ports = lambda words: [_VAR.sub(lambda m: "12345" if m.group(1).endswith("_PORT") else m.group(0), w)
                               for w in words]  # noqa: E731  (a port where the override names one)
        argv = _argv(ports(svc["command"]))
        assert argv[:3] == ["python", "-m", "local_platform.hadoop"], name
        run = _parser().parse_args(argv[3:])
        assert run.action == name and (run.home, run.state) == (Path("/opt/hadoop"), Path("/var/lib/mediation-backup/hadoop"))
        # The check reads the readiness the launcher writes under its state folder.
        assert svc["healthcheck"]["test"] == ["CMD", "/app/deploy/hadoop-health.sh", str(run.state), name]
        # The test stack's JVMs compile with C1 only and collect serially, as the test sessions' platform.
        assert run.jvm_options == ([] if compose is COMPOSE else ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
    assert "hdfs-data:/var/lib/mediation-backup/hadoop" in SERVICES["hdfs"]["volumes"]
    assert re.search(r"^COPY \$\{HADOOP_JARS\}/lib /opt/hadoop/lib$", _stages()["tryout"], re.M)


def test_hadoop_launcher_passes_jvm_options_after_its_own_and_refuses_a_bad_one(tmp_path):
    from config.settings import PlatformSettings
    from local_platform.hadoop import LocalHadoop, main

    h = LocalHadoop(PlatformSettings(jvm_options=["-XX:+UseSerialGC", "-Dx=1"]), tmp_path, tmp_path / "home")
    for argv in (h.hdfs_command(), h.yarn_command(), h.metastore_command()):
        assert argv[argv.index("-XX:+UseSerialGC") + 1] == "-Dx=1"
        assert argv.index("-XX:+UseSerialGC") > max(i for i, a in enumerate(argv) if a.startswith("-Xmx"))
    with pytest.raises(SystemExit) as ei:
        main(["hdfs", "--home", str(tmp_path), "--state", str(tmp_path), "--jvm-option=-jar"])
    assert str(ei.value) == "platform.jvm_options: '-jar' is not one -X... or -D... option without spaces"


def test_hadoop_conf_binds_where_told_and_gives_out_the_service_names(tmp_path):
    """In a container on a bridge network the daemons bind to 0.0.0.0 and clients are told the service names."""
    from config.settings import PlatformSettings
    from local_platform.hadoop import LocalHadoop

    h = LocalHadoop(PlatformSettings(), tmp_path, tmp_path / "home", host="yarn", listen="0.0.0.0", namenode_host="hdfs")
    h.write_conf()
    core = (h.conf_dir / "core-site.xml").read_text()
    hdfs_site = (h.conf_dir / "hdfs-site.xml").read_text()
    yarn_site = (h.conf_dir / "yarn-site.xml").read_text()
    assert "<value>hdfs://hdfs:8020</value>" in core
    assert "<name>dfs.namenode.rpc-bind-host</name><value>0.0.0.0</value>" in hdfs_site
    assert "<name>dfs.datanode.hostname</name><value>yarn</value>" in hdfs_site
    assert "<name>yarn.resourcemanager.address</name><value>yarn:8032</value>" in yarn_site
    assert "<name>yarn.resourcemanager.bind-host</name><value>0.0.0.0</value>" in yarn_site
    daemons = (h.daemon_conf_dir / "local-daemons.xml").read_text()
    assert "<name>mediation.local.datanode.configured-address</name><value>true</value>" in daemons
    # The local platform's default: loopback only, MiniDFSCluster's own DataNode addresses.
    local = LocalHadoop(PlatformSettings(), tmp_path / "local", tmp_path / "home")
    local.write_conf()
    assert "bind-host" not in (local.conf_dir / "hdfs-site.xml").read_text()
    assert "<value>false</value>" in (local.daemon_conf_dir / "local-daemons.xml").read_text()


def test_hadoop_health_check_says_ready_only_when_the_launcher_said_so_lately(tmp_path):
    import subprocess
    import time

    script = str(ROOT / "deploy" / "hadoop-health.sh")
    (tmp_path / "run").mkdir()
    health = tmp_path / "run" / "hdfs.health"

    def check():
        done = subprocess.run([script, str(tmp_path), "hdfs"], capture_output=True, text=True)
        return done.returncode, done.stdout.strip()

    assert check() == (1, "hdfs: the launcher has not reported yet")
    health.write_text("not ready: 1 of 2 DataNodes live\n")
    assert check() == (1, "not ready: 1 of 2 DataNodes live")
    health.write_text("ready\n")
    assert check() == (0, "")
    old = time.time() - 60
    os.utime(health, (old, old))  # the launcher stopped writing: its last word no longer counts
    assert check()[0] == 1 and "written 6" in check()[1]
