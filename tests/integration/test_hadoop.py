"""The workflows on real Hadoop: the local platform's MiniDFSCluster (NameNode, two DataNodes,
permissions on) and MiniYARNCluster, checked from outside with Hadoop's own client (FsShell, what
``hdfs dfs`` runs) and the ResourceManager's REST API.

Writes go through WebHDFS as an ordinary HDFS user (``backup``), never the superuser, so the
NameNode checks permissions as it does in production.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from backup import copy_engine
from backup.customer_files import ledger
from base.errors import AuthFailed
from backup.resources import Resources
from config.settings import Settings, load_settings
from storage.hdfs_checksum import HdfsChecksummer, matches
from storage.local import LocalBackend
from storage.webhdfs import WebHdfsBackend
from tests.helpers import hdfs
from tests.integration.test_customer_files import _lines, edge_sha256, own_config, run_inline, wc_style

USER = "backup"
HOME = "/it"
BLOCK = 4096  # a small block size (the platform allows >= 1024) so a few KB span several blocks


@pytest.fixture(scope="module")
def home(platform, settings) -> str:
    """An HDFS folder owned by USER, made by the superuser."""
    with hdfs(settings) as admin:
        admin.mkdir(HOME)
        admin._client.set_owner(HOME, owner=USER)
    return HOME


def as_user(settings, user: str = USER, **options) -> WebHdfsBackend:
    return WebHdfsBackend(f"http://127.0.0.1:{settings.platform.namenode_http_port}", user=user, **options)


def fs_shell(platform, *args: str) -> str:
    """Hadoop's own client on the platform's HDFS; its stdout."""
    return platform.hadoop.fs_shell(*args).stdout.decode()


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size, algorithm", [
    (0, "MD5-of-0MD5-of-0CRC32"),               # no block at all
    (1000, "MD5-of-0MD5-of-512CRC32C"),         # under one block, a partial last chunk
    (BLOCK, "MD5-of-0MD5-of-512CRC32C"),        # exactly one block
    (3 * BLOCK + 17, "MD5-of-8MD5-of-512CRC32C"),  # several blocks
    (40 * BLOCK, "MD5-of-8MD5-of-512CRC32C"),   # enough blocks that Hadoop's MD5 buffer grows and pads
])
def test_checksum_computed_while_copying_equals_the_namenodes(settings, platform, home, size, algorithm):
    data = random.Random(size).randbytes(size)
    path = f"{home}/checksum-{size}"
    with as_user(settings, block_size=BLOCK) as fs:
        fs.delete(path)
        fs.write_atomic(path, chunks_of(data, 700) or [b""])
        summer = HdfsChecksummer(fs.checksum_spec())
        for chunk in chunks_of(data, 999):  # other chunk borders than the upload's
            summer.update(chunk)
        reported, block_size = fs.file_checksum(path)
    assert block_size == BLOCK
    assert reported["algorithm"] == algorithm
    assert matches(summer.results(), reported) is True
    # Hadoop's own client reports the same checksum (hdfs dfs -checksum).
    _, shell_algorithm, shell_bytes = fs_shell(platform, "-checksum", path).split()
    assert (shell_algorithm, shell_bytes) == (algorithm, reported["bytes"][:2 * reported["length"]])


@pytest.mark.parametrize("size", [1000, 3 * BLOCK + 17])
def test_composite_crc_computed_while_copying_equals_hadoops(settings, platform, home, size):
    """Where a cluster combines CRCs as COMPOSITE_CRC (dfs.checksum.combine.mode), Hadoop's own client
    asked in that mode reports the CRC32C of the whole content: the one computed in the same pass."""
    data = random.Random(size + 1).randbytes(size)
    path = f"{home}/composite-{size}"
    with as_user(settings, block_size=BLOCK) as fs:
        fs.delete(path)
        fs.write_atomic(path, chunks_of(data, 700))
        summer = HdfsChecksummer(fs.checksum_spec())
    for chunk in chunks_of(data, 333):
        summer.update(chunk)
    _, algorithm, value = fs_shell(platform, "-D", "dfs.checksum.combine.mode=COMPOSITE_CRC", "-checksum",
                                   path).split()
    assert algorithm == "COMPOSITE-CRC32C"
    assert matches(summer.results(), {"algorithm": algorithm, "bytes": value, "length": len(value) // 2}) is True


class Altering(WebHdfsBackend):
    """A WebHDFS destination whose writes land altered on the cluster (a bad disk, a buggy proxy)."""

    def __init__(self, *args, alter, **kwargs):
        super().__init__(*args, **kwargs)
        self.alter = alter

    def _create(self, path, chunks):
        super()._create(path, [self.alter(b"".join(chunks))])


def _copy_to_hdfs(settings, tmp_path, data: bytes, backend: WebHdfsBackend, base: str) -> dict:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "traffic_1.csv").write_bytes(data)
    stat = (src / "traffic_1.csv").stat()
    item = {"customer": "acme", "domain": "traffic", "source": 0, "path": str(src / "traffic_1.csv"),
            "size": stat.st_size, "mtime": stat.st_mtime}
    dest = copy_engine.Destination("primary", f"hdfs://127.0.0.1/{base}", backend=backend, base=base)
    local = copy_engine.Destination("secondary", str(tmp_path / "edge"))
    local.open(Settings())
    return copy_engine.copy_file(item, LocalBackend(), [dest, local], lambda n: None)


@pytest.mark.parametrize("alter, why", [
    (lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:], "HDFS file checksum MD5-of-8MD5-of-512CRC32C differs"),
    (lambda data: data[:-1] + b"X" if data[-1:] != b"X" else data[:-1] + b"Y", "HDFS file checksum"),
])
def test_a_copy_differing_by_one_byte_fails_verification_and_is_removed(settings, home, tmp_path, alter, why):
    data = _lines(random.Random(5), 600)  # ~30 KB: several 4 KB blocks
    base = f"{home}/altered-{tmp_path.name}"
    with Altering(f"http://127.0.0.1:{settings.platform.namenode_http_port}", user=USER, block_size=BLOCK,
                  alter=alter) as fs:
        result = _copy_to_hdfs(settings, tmp_path, data, fs, base)
        assert result["status"] == "failed"
        assert why in result["error"] and "does not match the source" in result["error"], result["error"]
        assert fs.list(f"{base}/traffic") == [], "the wrong copy and its temp file are gone"
    assert result["verified_by"]["primary"].startswith("hdfs file checksum")


def test_a_truncated_copy_fails_on_its_size_before_any_checksum(settings, home, tmp_path):
    data = _lines(random.Random(6), 600)
    base = f"{home}/truncated-{tmp_path.name}"
    with Altering(f"http://127.0.0.1:{settings.platform.namenode_http_port}", user=USER, block_size=BLOCK,
                  alter=lambda d: d[:-10]) as fs:
        result = _copy_to_hdfs(settings, tmp_path, data, fs, base)
        assert result["status"] == "failed" and f"bytes instead of {len(data)}" in result["error"], result["error"]
        assert fs.list(f"{base}/traffic") == []


def test_a_copy_verified_by_checksum_is_not_read_back(settings, home, tmp_path, monkeypatch):
    data = _lines(random.Random(7), 600)
    base = f"{home}/no-read-back-{tmp_path.name}"

    def no_read_back(self, paths):
        raise AssertionError(f"read back {paths}")

    monkeypatch.setattr(WebHdfsBackend, "sha256_many", no_read_back)
    with as_user(settings, block_size=BLOCK) as fs:
        result = _copy_to_hdfs(settings, tmp_path, data, fs, base)
        assert result["status"] == "copied", result["error"]
        assert result["verified_by"] == {"primary": "hdfs file checksum MD5-of-8MD5-of-512CRC32C",
                                         "secondary": "sha256 read back"}
        with fs.open_read(f"{base}/traffic/traffic_1.csv") as f:
            assert f.read() == data


def test_a_file_written_with_another_block_size_is_read_back_and_says_so(settings, home, tmp_path):
    data = _lines(random.Random(8), 600)
    base = f"{home}/other-block-size-{tmp_path.name}"
    with as_user(settings, block_size=2 * BLOCK) as other:  # someone else's earlier copy, same bytes
        other.mkdir(f"{base}/traffic")
        other.write_atomic(f"{base}/traffic/traffic_1.csv", [data])
    with as_user(settings, block_size=BLOCK) as fs:
        result = _copy_to_hdfs(settings, tmp_path, data, fs, base)
    assert result["status"] == "copied", result["error"]  # the secondary was written, the primary found
    assert result["verified_by"]["primary"].startswith("read back: the cluster's checksum MD5-of-16MD5-of-512CRC32C "
                                                       "with block size 8192")


def test_a_target_folder_the_user_may_not_write_is_a_clear_permission_error(settings, home, tmp_path):
    with hdfs(settings) as admin:
        admin.mkdir("/it-root-only")  # owned by the superuser, 755
    with as_user(settings) as fs:
        with pytest.raises(AuthFailed, match=r"Permission denied: user=backup, access=WRITE, inode=\"/it-root-only\""):
            fs.mkdir("/it-root-only/acme")


# -- customer-files into HDFS, as the legacy job (seed 002) --------------------------------------

@pytest.fixture
def hdfs_run(settings, platform, home, tmp_path):
    """A customer-files config following seed 002: primary on HDFS, secondary on the edge node, flag on HDFS."""
    rng = random.Random(12)
    src = tmp_path / "incoming"
    names = {"acme": ["acme_traffic_1.csv", "acme_activation_1.csv", "acme_traffic_empty.csv"],
             "globex": ["globex_traffic_1.csv"]}
    for customer, files in names.items():
        (src / customer).mkdir(parents=True)
        for name in files:
            (src / customer / name).write_bytes(b"" if "empty" in name else _lines(rng, rng.randint(50, 4000)))
    webhdfs = f"hdfs://{USER}@127.0.0.1:{settings.platform.namenode_http_port}"
    base = f"{home}/customers-{tmp_path.name}"
    edge = f"{tmp_path}/edge"
    section = {"source_dirs": [str(src)],
               "customers": {c: {"primary": f"{webhdfs}{base}/{c}",
                                 "secondary": f"sftp://127.0.0.1:{settings.sftp.port}{edge}/{c}"} for c in names},
               "domains": {"traffic": ["*traffic*.csv"], "activations": ["*activation*.csv"]}, "settle_seconds": 0,
               "staging_table": "mnaas_test.cf_hdfs_inter", "final_table": "mnaas_test.cf_hdfs_count",
               "status_flag": f"{webhdfs}{base}/MNAAS_backup_files_process.status",
               "manifest_dir": str(tmp_path / "manifests")}
    res = Resources(load_settings(own_config(tmp_path / "hdfs.yaml", section)))
    return res, src, names, base, edge


def test_customer_files_into_hdfs_checked_with_hadoops_own_client(settings, platform, hdfs_run):
    res, src, names, base, edge = hdfs_run
    rec = run_inline(res)
    assert rec["state"] == "success" and rec["outputs"]["flag"] == "SUCCESS", rec.get("error")
    domain = {"acme_traffic_1.csv": "traffic", "acme_activation_1.csv": "activations",
              "acme_traffic_empty.csv": "traffic", "globex_traffic_1.csv": "traffic"}
    listed = fs_shell(platform, "-ls", "-R", base)
    remote = edge_sha256(settings, edge)
    for customer, files in names.items():
        for name in files:
            path = f"{base}/{customer}/{domain[name]}/{name}"
            assert path in listed
            body = platform.hadoop.fs_shell("-cat", path).stdout
            assert body == (src / customer / name).read_bytes(), f"{path} differs on HDFS"
            digest = hashlib.sha256(body).hexdigest()
            assert remote[f"{edge}/{customer}/{domain[name]}/{name}"] == digest
    assert ".part" not in listed, "no temporary file left on HDFS"
    # Replication 2 on the two DataNodes, owned by the writing user (permissions on).
    for line in listed.splitlines():
        if line.startswith("-"):
            fields = line.split()
            assert fields[1] == "2" and fields[2] == USER, line
    flag = fs_shell(platform, "-cat", f"{base}/MNAAS_backup_files_process.status").splitlines()
    assert flag[0] == "SUCCESS" and f"job_id={rec['job_id']}" in flag and "copied=4" in flag, flag
    results = [r for key, r in ledger.load_results(res, rec["job_id"], "acme").items()]
    assert results and all(r["verified_by"]["primary"].startswith("hdfs file checksum") for r in results), results
    counted = {row[0]: row[1] for row in _counts(res)}
    for customer, files in names.items():
        for name in files:
            assert counted[name] == wc_style(src / customer / name)


def _counts(res) -> list[tuple]:
    with res.hive() as hive:
        return hive.query("SELECT file_name, records FROM mnaas_test.cf_hdfs_count")


# -- table-backup reading its CSV folder from HDFS (seed 000) ------------------------------------

def _upload_csv(settings, folder: str, rows: list[tuple], parts: int = 2) -> None:
    from tests.integration.test_table_backup import csv_line

    lines = [csv_line(r[:8]) for r in rows]
    size = -(-len(lines) // parts)
    with as_user(settings) as fs:
        fs.mkdir(folder)
        for p in range(parts):
            fs.write_atomic(f"{folder}/part-{p:03d}.csv",
                            ["\n".join(lines[p * size:(p + 1) * size]).encode() + b"\n"])


@pytest.mark.parametrize("spelling", ["hdfs:///", "hdfs://127.0.0.1:{port}/"])
def test_table_backup_reads_its_source_folder_from_hdfs(settings, platform, home, worker, celery_app, res, spelling):
    from tests.helpers import enqueue, wait_job
    from tests.integration.test_table_backup import DB, assert_same_rows, backup_rows, execute, good_rows, new_live

    execute(settings, f"CREATE DATABASE IF NOT EXISTS {DB}")
    table = new_live(settings, f"traffic_hdfs_{'short' if spelling == 'hdfs:///' else 'full'}")
    rows = good_rows(1500)
    folder = f"{home}/traffic/details-{table.split('.')[1]}"
    _upload_csv(settings, folder, rows)
    source = spelling.format(port=settings.platform.namenode_port) + folder.lstrip("/")
    rec = wait_job(res, enqueue(celery_app, "backup.table_backup", table=table, source=source), timeout=240)
    assert rec["state"] == "success", rec.get("error")
    assert rec["outputs"]["rows_accepted"] == 1500 and rec["outputs"]["rows_rejected"] == 0, rec["outputs"]
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    # The backup's data lies in the warehouse on HDFS, as Hadoop's own client lists it.
    data_table = rec["outputs"]["data_table"].split(".")[1]
    listed = fs_shell(platform, "-ls", "-R", f"/user/hive/warehouse/{table.split('.')[0]}.db/{data_table}")
    assert ".parquet" in listed


def test_edge_export_reads_a_table_stored_on_hdfs(settings, platform, res, worker, celery_app):
    """Every table of the platform lives in the warehouse on HDFS: edge-export's tests all read HDFS-stored
    tables; this one says so and runs one export end to end."""
    from tests.helpers import enqueue, new_sample_table, wait_job

    table = new_sample_table(settings, "on_hdfs", rows=3000)
    with res.hive() as hive:
        described = hive.query(f"DESCRIBE FORMATTED {table}")
    location = next(row[1] for row in described if row[0].strip() == "Location")
    assert location.startswith(f"hdfs://127.0.0.1:{settings.platform.namenode_port}/user/hive/warehouse/"), location
    assert fs_shell(platform, "-ls", "-R", location).count(".parquet") >= 1
    rec = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table), timeout=240)
    assert rec["state"] == "success", rec.get("error")
    assert rec["outputs"]["rows"] > 0


def test_hdfs_data_survives_platform_down_and_up(settings, platform, home):
    """The NameNode's image and the DataNodes' blocks live under the state folder: a stopped and restarted
    HDFS JVM (backupctl platform down/up) serves the same files, formatted only the very first time."""
    data = random.Random(99).randbytes(3 * BLOCK + 5)
    path = f"{home}/survives-restart"
    with as_user(settings, block_size=BLOCK) as fs:
        fs.delete(path)
        fs.write_atomic(path, [data])
    assert platform.down(only=["hdfs"]) == {"hdfs": "stopped"}
    assert platform.up(only=["hdfs"], timeout=180) == {"hdfs": "started"}
    assert platform.hadoop.fs_shell("-cat", path).stdout == data
    assert platform.hadoop.hdfs_ready() is None

