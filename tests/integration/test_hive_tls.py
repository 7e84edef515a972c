"""HiveServer2 over TLS, verified: a real Spark Thrift server (the pyspark wheel's HiveThriftServer2) with
``hive.server2.use.SSL`` and a keystore made by ``keytool`` for 127.0.0.1 only.

The platform's own HiveServer2 stays plain (every other test uses it); this module starts one small JVM of
its own (local[1], 512 MB, no UI, an embedded Derby metastore in a temporary folder) in one module-scoped
fixture and stops it at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from base.errors import AuthFailed
from tests.conftest import PORT_OFFSET

HIVE_TLS_PORT = 13405 + PORT_OFFSET
STORE_PASSWORD = "changeit-tests"  # protects a throwaway test keystore only


@pytest.fixture(scope="module")
def hive_tls(tmp_path_factory):
    """(CA certificate file, port) of a TLS HiveServer2 whose certificate names IP 127.0.0.1 only."""
    import pyspark

    from local_platform.services import port_open, wait_for_ports

    d = tmp_path_factory.mktemp("hive-tls")
    keystore, ca = d / "hs2.jks", d / "hs2-ca.pem"
    subprocess.run(["keytool", "-genkeypair", "-alias", "hs2", "-keyalg", "RSA", "-keysize", "2048",
                    "-dname", "CN=hiveserver2-test", "-ext", "SAN=ip:127.0.0.1", "-validity", "2",
                    "-storetype", "JKS", "-keystore", str(keystore), "-storepass", STORE_PASSWORD,
                    "-keypass", STORE_PASSWORD], check=True, capture_output=True)
    subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "hs2", "-keystore", str(keystore),
                    "-storepass", STORE_PASSWORD, "-file", str(ca)], check=True, capture_output=True)
    if port_open(HIVE_TLS_PORT):
        raise RuntimeError(f"port {HIVE_TLS_PORT} is taken: set MB_TEST_PORT_OFFSET")
    home = os.path.dirname(pyspark.__file__)
    argv = [os.path.join(home, "bin", "spark-submit"),
            "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
            "--master", "local[1]", "--driver-memory", "512m",
            "--conf", "spark.ui.enabled=false",
            # No metastore to create (its Derby schema is most of the start-up), a JVM tuned to start (C1 only, one GC thread).
            "--conf", "spark.sql.catalogImplementation=in-memory",
            "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
            "--conf", f"spark.sql.warehouse.dir={d / 'warehouse'}",
            "--conf", f"spark.hadoop.hive.server2.thrift.port={HIVE_TLS_PORT}",
            "--conf", "spark.hadoop.hive.server2.thrift.bind.host=127.0.0.1",
            "--conf", "spark.hadoop.hive.server2.authentication=NOSASL",
            "--conf", "spark.hadoop.hive.server2.use.SSL=true",
            "--conf", f"spark.hadoop.hive.server2.keystore.path={keystore}",
            "--conf", f"spark.hadoop.hive.server2.keystore.password={STORE_PASSWORD}",
            "spark-internal"]
    env = dict(os.environ, SPARK_HOME=home, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    env.pop("HADOOP_CONF_DIR", None)  # no shared metastore: an embedded Derby one in ``d``
    log = open(d / "hs2.log", "wb")
    proc = subprocess.Popen(argv, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_ports([HIVE_TLS_PORT], 240, proc, d / "hs2.log")
        yield ca, HIVE_TLS_PORT
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _client(port: int, **hive):
    from config.settings import HiveSettings
    from connectors.hive import HiveClient

    return HiveClient(HiveSettings(host=hive.pop("host", "127.0.0.1"), port=port, auth_mechanism="NOSASL",
                                   use_ssl=True, timeout=60, **hive))


def test_tls_with_the_servers_ca_is_verified_and_works(hive_tls):
    ca, port = hive_tls
    with _client(port, ca_cert=ca) as hive:
        assert hive.query("SELECT 1 + 1", "tls query") == [(2,)]


def test_a_certificate_not_signed_by_a_trusted_ca_is_refused(hive_tls):
    _, port = hive_tls
    started = time.monotonic()
    with pytest.raises(AuthFailed, match="TLS certificate refused"):  # today: connected, unverified
        _client(port)
    assert time.monotonic() - started < 30


def test_a_certificate_for_another_host_name_is_refused(hive_tls):
    ca, port = hive_tls
    with pytest.raises(AuthFailed, match="TLS certificate refused"):
        _client(port, host="localhost", ca_cert=ca)  # trusted, but it names 127.0.0.1 only


def test_the_loud_opt_out_connects_without_verifying_and_warns(hive_tls, caplog):
    _, port = hive_tls
    with caplog.at_level("WARNING", logger="connectors.hive"):
        with _client(port, insecure_skip_tls_verify=True) as hive:
            assert hive.query("SELECT 2", "tls query") == [(2,)]
    assert "NOT verified" in caplog.text
