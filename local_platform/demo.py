"""``make demo``: the three workflows on the embedded local platform, and where their results lie.

``backupctl demo prepare`` makes the inputs the legacy jobs would find: the sample table
edge-export reads, new files in every configured customer's incoming folder (customer-files), and
a folder of ``;`` CSV files on HDFS with its live table (table-backup, as seed 000 names
``hdfs:///data/mnaas/traffic/details/``).  The Makefile then runs each workflow with
``backupctl run … --wait`` (progress as it goes), and ``backupctl demo summary`` prints where every
result lies: HDFS paths (listed by Hadoop's own client), edge-node paths, tables, and how to watch
runs in Flower.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import random

from base.identifiers import TableName
from backup.resources import Resources
from storage.webhdfs import WebHdfsBackend
from local_platform.sample_data import create_sample_table

EXPORT_TABLE = TableName("mnaas", "customer_traffic")
BACKUP_TABLE = TableName("mnaas", "traffic_details")
BACKUP_SOURCE = "/data/mnaas/traffic/details"
LIVE_DDL = ("(id BIGINT, msisdn STRING, customer STRING, note STRING, bytes_up BIGINT, amount DOUBLE, "
            "event_ts TIMESTAMP, partition_date STRING) USING parquet PARTITIONED BY (partition_date)")
# One file per domain pattern of the embedded config, per customer and run.
DOMAIN_FILES = {"traffic": "{c}_traffic_{n}.csv", "activations": "{c}_activation_{n}.csv",
                "actives": "{c}_actives_{n}.csv", "tolling": "{c}_tolling_{n}.csv"}


def prepare(res: Resources, export_table: TableName = EXPORT_TABLE, export_rows: int = 50_000,
            backup_rows: int = 20_000) -> dict:
    """Create the demo's inputs; returns what was made (cost: a few seconds plus the sample insert)."""
    with res.hive() as hive:
        exported = create_sample_table(hive, export_table, rows=export_rows)
        hive.execute(f"CREATE TABLE IF NOT EXISTS {BACKUP_TABLE.sql} {LIVE_DDL}", "create live table")
    return {"edge-export table": f"{export_table} ({exported} rows)",
            "customer files": customer_files(res),
            "table-backup source": backup_source(res, backup_rows)}


def customer_files(res: Resources, per_domain: int = 3) -> str:
    """New files for every configured customer, old enough to pass ``settle_seconds``."""
    cfg = res.settings.customer_files
    incoming = res.settings.path(cfg.source_dirs[0])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    rng = random.Random(stamp)
    settled = (dt.datetime.now() - dt.timedelta(seconds=cfg.settle_seconds + 60)).timestamp()
    made = 0
    for customer in cfg.customers:
        folder = incoming / customer
        folder.mkdir(parents=True, exist_ok=True)
        for domain, pattern in DOMAIN_FILES.items():
            for i in range(per_domain):
                path = folder / pattern.format(c=customer, n=f"{stamp}_{i}")
                lines = [f"{rng.randint(10**8, 10**9)};4479{rng.randint(0, 10**8):08d};{domain};"
                         f"{rng.randint(0, 99999)}\n" for _ in range(rng.randint(200, 5000))]
                path.write_text("".join(lines))
                os.utime(path, (settled, settled))
                made += 1
    return f"{made} files under {incoming}"


def backup_source(res: Resources, rows: int, files: int = 4) -> str:
    """``rows`` CSV lines in ``files`` files on HDFS, written as the platform's HDFS user."""
    p = res.settings.platform
    first = dt.date.today().replace(day=1) - dt.timedelta(days=150)
    with WebHdfsBackend(f"http://127.0.0.1:{p.namenode_http_port}", user=p.hdfs_user) as fs:
        fs.delete(BACKUP_SOURCE, recursive=True)
        fs.mkdir(BACKUP_SOURCE)
        per_file = -(-rows // files)
        for f in range(files):
            lines = []
            for i in range(f * per_file, min(rows, (f + 1) * per_file)):
                day = first + dt.timedelta(days=i % 150)
                lines.append(f'{i};4479{i:08d};"Acme;Telecom";roaming;{i * 37 % 100_000};{(i % 10_000) / 7:.4f};'
                             f"{day} {i % 24:02d}:{i % 60:02d}:{i % 59:02d};{day}\n")
            fs.write_atomic(posixpath.join(BACKUP_SOURCE, f"part-{f:03d}.csv"), ["".join(lines).encode()])
    return f"{rows} lines in {files} files at hdfs://{BACKUP_SOURCE}/"


def summary(res: Resources, export_table: TableName = EXPORT_TABLE) -> str:
    """Where the latest run of each workflow put its results, and how to watch runs."""
    from local_platform.services import LocalPlatform

    s = res.settings
    plat = LocalPlatform(s)
    lines = ["", "Where the results lie", "====================="]
    export = res.jobs.last("edge-export", str(export_table))
    if export:
        out = export.get("outputs", {})
        lines += [f"edge-export {export['state']}: {out.get('rows')} rows, archive on the edge node "
                  f"(sshd 127.0.0.1:{s.sftp.port}): {out.get('remote_uri') or out.get('remote_path')}"]
    cf = res.jobs.last("customer-files", "all")
    if cf:
        out = cf.get("outputs", {})
        lines += [f"customer-files {cf['state']}: flag {out.get('flag')}, manifest {out.get('manifest')}, "
                  f"counts in {s.customer_files.final_table}"]
        for name, where in s.customer_files.customers.items():
            lines += [f"  {name}: primary {where.primary}"]
            if where.secondary:
                lines.append(f"  {' ' * len(name)}  secondary {where.secondary}")
        lines += ["  on HDFS, as Hadoop's own client lists it (hdfs dfs -ls -R /backup/customers):"]
        listing = plat.hadoop.fs_shell("-ls", "-R", "/backup/customers", check=False).stdout.decode()
        files = [ln for ln in listing.splitlines() if ln.startswith("-")]
        lines += [f"    {ln}" for ln in files[:8]] + ([f"    … {len(files) - 8} more"] if len(files) > 8 else [])
    tb = res.jobs.last("table-backup", str(BACKUP_TABLE))
    if tb:
        out = tb.get("outputs", {})
        lines += [f"table-backup {tb['state']}: {out.get('rows_accepted')} rows from hdfs://{BACKUP_SOURCE}/ into "
                  f"{BACKUP_TABLE}_bkp (data table {out.get('data_table')}, warehouse "
                  f"{plat.hadoop.namenode_uri}/user/hive/warehouse)"]
    lines += ["", "Watch runs in Flower: FLOWER_BASIC_AUTH=admin:<password> backupctl flower, then open "
                  f"http://{s.flower.address}:{s.flower.port}/ (tasks, workers, retries).",
              f"The platform: backupctl platform status (YARN: http://127.0.0.1:{s.platform.resourcemanager_http_port}"
              f"/cluster, HDFS: http://127.0.0.1:{s.platform.namenode_http_port}/)."]
    return "\n".join(lines)

