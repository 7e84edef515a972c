"""customer-files copy logic on local folders: one read feeds the count, the hash and both copies."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import random
import subprocess

import pytest

from backup import customer_files as wf
from backup.copy_engine import KERNEL_COPY_CHECK, Destination, copy_file
from backup.customer_files import flag
from backup.records import RecordCounter, count_records
from base.errors import ConnectionFailed, classify
from config.settings import Settings
from connectors.hive import sql_value
from storage.base import READ_CHUNK, FileSource, is_temp_name
from storage.local import LocalBackend, copy_in_kernel


def wc_style(path) -> int:
    """``wc -l`` plus one for a last line without a newline: the count the legacy job reports."""
    lines = int(subprocess.run(["wc", "-l"], stdin=open(path, "rb"), capture_output=True, check=True).stdout)
    data = open(path, "rb").read()
    return lines + (1 if data and not data.endswith(b"\n") else 0)


@pytest.mark.parametrize("data, records", [
    (b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n", 1), (b"\n\n", 2),
    (b"a\r\nb\r\n", 2), (b"a\r\nb", 2), (b"no newline at all, just text", 1), (b"a\rb\r", 1),
])
def test_count_records(data, records, tmp_path):
    assert count_records(data) == records
    (tmp_path / "f").write_bytes(data)
    assert wc_style(tmp_path / "f") == records


def test_count_records_across_chunk_boundaries_matches_wc(tmp_path):
    rng = random.Random(7)
    for n in range(30):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 300)))
        counter = RecordCounter()
        cut = sorted(rng.randint(0, len(data)) for _ in range(3))
        for piece in (data[:cut[0]], data[cut[0]:cut[1]], data[cut[1]:cut[2]], data[cut[2]:]):
            counter.update(piece)
        (tmp_path / f"f{n}").write_bytes(data)
        assert counter.records == wc_style(tmp_path / f"f{n}"), data


class CountingLocal(LocalBackend):
    """A local backend that counts how often each file is opened for reading."""

    def __init__(self):
        super().__init__()
        self.opened: list[str] = []

    @contextlib.contextmanager
    def open_read(self, path, offset=0):
        self.opened.append(path)
        with super().open_read(path, offset) as stream:
            yield stream


class BreakingLocal(LocalBackend):
    """A local backend whose reads fail after ``after`` bytes, like a disk error halfway."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    @contextlib.contextmanager
    def open_read(self, path, offset=0):
        data = open(path, "rb").read()[: self.after]

        class Stream(io.BytesIO):
            def read(self, size=-1):
                chunk = super().read(size)
                if not chunk:
                    raise OSError(5, "Input/output error")
                return chunk
        yield Stream(data)


def _tree(tmp_path, name="trafic é 1.csv", data=None):
    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    data = data if data is not None else b"".join(b"%07d;caf\xc3\xa9\r\n" % i for i in range(300_000))
    (src / name).write_bytes(data)
    stat = (src / name).stat()
    item = {"customer": "acme", "domain": "traffic", "source": 0, "path": str(src / name), "size": stat.st_size,
            "mtime": stat.st_mtime}
    dests = [Destination("primary", str(tmp_path / "primary")), Destination("secondary", str(tmp_path / "edge"))]
    for dest in dests:
        dest.open(Settings())
    return item, data, dests


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@contextlib.contextmanager
def _writer_threads():
    """The paths the copy engine started a writer thread (``_Feed``) for inside the block; the threads still run."""
    from backup import copy_engine

    started: list[str] = []
    original = copy_engine._Feed.__init__
    copy_engine._Feed.__init__ = lambda self, backend, path: started.append(path) or original(self, backend, path)
    try:
        yield started
    finally:
        copy_engine._Feed.__init__ = original


def test_one_read_feeds_both_copies_count_and_hash(tmp_path):
    item, data, dests = _tree(tmp_path)
    assert len(data) > 3 * READ_CHUNK
    source = CountingLocal()
    seen = []
    result = copy_file(item, source, dests, seen.append)
    assert source.opened == [item["path"]]  # the source is read once
    assert sum(seen) == len(data)
    assert result["status"] == "copied" and result["error"] is None
    assert result["records"] == 300_000 and result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    for root in ("primary", "edge"):
        assert (tmp_path / root / "traffic" / "trafic é 1.csv").read_bytes() == data
        assert _files(tmp_path / root) == ["traffic/trafic é 1.csv"]
    assert result["primary_uri"] == (tmp_path / "primary" / "traffic" / "trafic é 1.csv").as_uri()


def test_identical_file_already_there_is_verified_not_rewritten(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"x\ny\n")
    (tmp_path / "primary" / "traffic").mkdir(parents=True)
    existing = tmp_path / "primary" / "traffic" / "trafic é 1.csv"
    existing.write_bytes(data)
    os.utime(existing, (1_000_000, 1_000_000))
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "copied"  # the secondary was written
    assert existing.stat().st_mtime == 1_000_000  # the primary was only verified
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "present" and result["records"] == 2


def test_different_file_at_the_name_is_never_overwritten(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"new\n")
    (tmp_path / "edge" / "traffic").mkdir(parents=True)
    other = tmp_path / "edge" / "traffic" / "trafic é 1.csv"
    other.write_bytes(b"old backup\n")
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed"
    assert "secondary: AlreadyExists: a different file is already at" in result["error"]
    assert other.read_bytes() == b"old backup\n"
    assert (tmp_path / "primary" / "traffic" / "trafic é 1.csv").read_bytes() == b"new\n"
    assert _files(tmp_path / "edge") == ["traffic/trafic é 1.csv"]


class CorruptingLocal(LocalBackend):
    """A local backend whose new files get one bit flipped once written: damage between write and verification."""

    def _create(self, path, chunks):
        super()._create(path, chunks)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 1]))


def test_a_copy_that_fails_verification_is_removed_and_fails_the_file(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"a;1\nb;2\n")
    dests[1].backend = CorruptingLocal()  # the secondary damages what it stores
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed"
    assert "secondary: ChecksumMismatch:" in result["error"] and "removed" in result["error"], result["error"]
    assert _files(tmp_path / "edge") == [], "the damaged copy must not stay at its final name"
    assert (tmp_path / "primary" / "traffic" / "trafic é 1.csv").read_bytes() == data


class WatchedLocal(LocalBackend):
    """A local destination that logs its reads and renames, and every final name that ever held bytes other
    than ``good`` (checked right after each rename); with ``corrupt`` it flips a bit of each new file."""

    def __init__(self, good: bytes, corrupt: bool = False):
        super().__init__()
        self.good, self.corrupt = good, corrupt
        self.reads: list[str] = []
        self.renames: list[tuple[str, str]] = []
        self.bad_at_final_name: list[str] = []

    def _create(self, path, chunks):
        super()._create(path, chunks)
        if self.corrupt:
            with open(path, "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 1]))

    @contextlib.contextmanager
    def open_read(self, path, offset=0):
        self.reads.append(os.path.basename(path))
        with super().open_read(path, offset) as stream:
            yield stream

    def rename(self, src, dst, *, overwrite=False):
        super().rename(src, dst, overwrite=overwrite)
        self.renames.append((os.path.basename(src), os.path.basename(dst)))
        if open(dst, "rb").read() != self.good:
            self.bad_at_final_name.append(dst)


def test_a_damaged_copy_never_holds_its_final_name(tmp_path):
    """Verification happens at the temporary name: a copy that fails it is never renamed (on the old order,
    rename then verify, the damaged bytes sat at the final name until the check removed them)."""
    item, data, dests = _tree(tmp_path, data=b"a;1\nb;2\n")
    dests[1].backend = WatchedLocal(data, corrupt=True)
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and "secondary: ChecksumMismatch:" in result["error"], result["error"]
    assert dests[1].backend.bad_at_final_name == [] and dests[1].backend.renames == []
    assert _files(tmp_path / "edge") == [], "nothing stays behind, not even the temporary file"
    assert (tmp_path / "primary" / "traffic" / "trafic é 1.csv").read_bytes() == data


def test_verify_before_rename_costs_one_read_back_and_one_rename_per_copy(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"x;1\n" * 1000)
    for dest in dests:
        dest.backend = WatchedLocal(data)
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "copied", result["error"]
    for dest in dests:
        (read,), ((renamed_from, renamed_to),) = dest.backend.reads, dest.backend.renames
        assert is_temp_name(read) and read == renamed_from, "read back once, at the temporary name"
        assert renamed_to == "trafic é 1.csv" and dest.backend.bad_at_final_name == []


def test_source_failing_midway_leaves_nothing_at_any_destination(tmp_path):
    item, data, dests = _tree(tmp_path)
    result = copy_file(item, BreakingLocal(after=READ_CHUNK + 10), dests, lambda n: None)
    assert result["status"] == "failed" and "source:" in result["error"]
    for root in ("primary", "edge"):
        assert _files(tmp_path / root) == []


@pytest.mark.parametrize("data", [b"a\nb\n", b"a;1\n" * 200_000], ids=["small", "large (kernel copies)"])
def test_changed_source_is_refused_and_its_copies_removed(tmp_path, data):
    item, data, dests = _tree(tmp_path, data=data)
    item["mtime"] -= 10  # discover saw an older version of the file
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and "changed while it was copied" in result["error"]
    assert _files(tmp_path / "primary") == [] and _files(tmp_path / "edge") == []


def test_one_destination_down_the_other_still_copied(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"a\n")
    dests[1].down = "ConnectionFailed: ssh edge2: refused"
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed"
    assert result["error"] == "secondary: not attempted: ConnectionFailed: ssh edge2: refused"
    assert (tmp_path / "primary" / "traffic" / "trafic é 1.csv").read_bytes() == b"a\n"


def test_connection_failure_takes_a_destination_out_for_the_task(tmp_path):
    dest = Destination("secondary", "/x")
    assert dest.fail(ConnectionFailed("ssh edge2: reset")) == "ConnectionFailed: ssh edge2: reset"
    assert dest.down == "ConnectionFailed: ssh edge2: reset"


def test_stale_temps_of_a_killed_writer_are_swept_once(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"a\n")
    (tmp_path / "primary" / "traffic").mkdir(parents=True)
    stale = tmp_path / "primary" / "traffic" / ".trafic é 1.csv.0123456789abcdef.part"
    stale.write_bytes(b"half")
    assert is_temp_name(stale.name)
    copy_file(item, LocalBackend(), dests, lambda n: None)
    assert _files(tmp_path / "primary") == ["traffic/trafic é 1.csv"]


def test_domain_of_first_match_wins():
    cfg = Settings.model_validate({"customer_files": {
        "source_dirs": ["/s"], "customers": {"a": {"primary": "/p", "secondary": "/q"}},
        "domains": {"traffic": ["*traffic*"], "tolling": ["*tolling*", "*traffic*"]},
        "staging_table": "d.s", "final_table": "d.f", "status_flag": "/f"}}).customer_files
    assert wf.domain_of(cfg, "x_traffic_tolling.csv") == "traffic"
    assert wf.domain_of(cfg, "tolling.csv") == "tolling"
    assert wf.domain_of(cfg, "readme.txt") is None


def test_sql_values():
    assert sql_value(None) == "NULL"
    assert sql_value(42) == "42"
    assert sql_value("it's a\\b") == "'it\\'s a\\\\b'"
    assert sql_value("東京 é") == "'東京 é'"
    assert sql_value("two\nlines") == "'two lines'"
    with pytest.raises(TypeError):
        sql_value(1.5)


def test_outcome_of():
    ok, bad, broken = {"failed": 0}, {"failed": 2}, {"failed": 0, "error": "TooManyDeliveries: x"}
    assert flag.outcome_of({"a": ok, "b": ok}) == ("SUCCESS", [])
    assert flag.outcome_of({"a": ok, "b": bad}) == ("PARTIAL", ["b"])
    assert flag.outcome_of({"a": broken, "b": bad}) == ("FAIL", ["a", "b"])


def test_manifest_round_trip(tmp_path):
    rows = [{"customer": "beta gmbh", "domain": "traffic", "file": 'a,"b" é.csv', "bytes": 3, "records": 1,
             "sha256": "ab", "primary_uri": "file:///p", "secondary_uri": None, "copied_at": None,
             "status": "failed", "error": "secondary: x, y"}]
    path = tmp_path / "m" / "run.csv"
    wf.write_manifest(path, rows)
    got = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    assert got == [{k: "" if v is None else str(v) for k, v in rows[0].items()}]
    assert [p.name for p in path.parent.iterdir()] == ["run.csv"]


def test_flag_text():
    rec = {"job_id": "j1", "outputs": {"totals": {"copied": 3, "failed": 1}}, "error": "PARTIAL: 1 of 2"}
    lines = flag.flag_text("PARTIAL", rec).splitlines()
    assert lines[0] == "PARTIAL" and lines[1] == "job_id=j1"
    assert "copied=3" in lines and "failed=1" in lines and "error=PARTIAL: 1 of 2" in lines


def test_progress_draws_a_bar_per_customer():
    from workers.cli import customer_progress

    rec = {"workflow": "customer-files", "target": "all", "state": "running", "phase": "copy:acme",
           "phases": [{"name": "lock", "state": "success"},
                      {"name": "copy:acme", "state": "running"},
                      {"name": "copy:beta gmbh", "state": "pending"},
                      {"name": "copy:zoë", "state": "success", "note": "3 copied, 0 already present, 0 failed"}],
           "progress": {"copy:acme": {"files_done": 1, "files_total": 4, "bytes_done": 512, "bytes_total": 1024,
                                      "failed": 0}}}
    lines = customer_progress(rec).splitlines()
    assert lines[0].startswith("customer-files all")
    assert lines[1].split() [:2] == ["acme", "[############............]"]
    assert "1/4 files" in lines[1] and "50.0%" in lines[1]
    assert lines[2].split()[-1] == "waiting"
    assert lines[3].endswith("success: 3 copied, 0 already present, 0 failed")


def test_a_finished_copy_keeps_its_last_bar():
    """A customer copied between two looks of --wait still shows its files, with the phase's end state."""
    from workers.cli import customer_progress

    rec = {"workflow": "customer-files", "target": "all", "state": "running", "phase": "copy:acme",
           "phases": [{"name": "copy:acme", "state": "success", "note": "4 copied, 0 already present, 0 failed"}],
           "progress": {"copy:acme": {"files_done": 4, "files_total": 4, "bytes_done": 1024, "bytes_total": 1024,
                                      "failed": 0}}}
    line = customer_progress(rec).splitlines()[1]
    assert "4/4 files" in line and "100.0%" in line and line.endswith("success")


def test_local_copies_are_not_read_back_unless_asked(tmp_path):
    """read_back_local off: a copy written now is verified by the in-stream hash, fsync and size, not reopened;
    one found already there is still read back and compared."""
    item, data, dests = _tree(tmp_path)
    counting = [CountingLocal(), CountingLocal()]
    for dest, backend in zip(dests, counting):
        dest.backend, dest.read_back_local = backend, False
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "copied", result
    assert counting[0].opened == counting[1].opened == [], "a copy just written was read back"
    assert result["verified_by"] == {"primary": KERNEL_COPY_CHECK, "secondary": KERNEL_COPY_CHECK}  # a large file
    again = copy_file(item, LocalBackend(), dests, lambda n: None)  # both copies there now: checked, not trusted
    assert again["status"] == "present"
    assert len(counting[0].opened) == len(counting[1].opened) == 1
    dests[0].read_back_local = True  # the setting on: the copy written now is read back as well
    (tmp_path / "primary" / "traffic" / "trafic é 1.csv").unlink()
    assert copy_file(item, LocalBackend(), dests, lambda n: None)["status"] == "copied"
    assert len(counting[0].opened) == 2


def test_a_different_file_already_there_still_fails_without_read_back(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"new\n")
    for dest in dests:
        dest.read_back_local = False
    (tmp_path / "edge" / "traffic").mkdir(parents=True)
    (tmp_path / "edge" / "traffic" / "trafic é 1.csv").write_bytes(b"old\n")  # same size, other bytes
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and "secondary: AlreadyExists: a different file" in result["error"]


@pytest.mark.parametrize("data", [b"", b"a;1\n", b"x" * 200_000])
def test_a_small_file_is_written_from_memory_and_checked(tmp_path, data):
    """Files up to SMALL_FILE_BYTES take the in-memory path: same copies, count and hash, no writer thread."""
    from backup import copy_engine

    assert len(data) <= copy_engine.SMALL_FILE_BYTES
    item, data, dests = _tree(tmp_path, data=data)
    with _writer_threads() as started:
        result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert started == []
    assert result["status"] == "copied" and result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["records"] == count_records(data) and result["bytes"] == len(data)
    for root in ("primary", "edge"):
        assert (tmp_path / root / "traffic" / "trafic é 1.csv").read_bytes() == data


def test_a_small_file_that_grew_is_refused_before_anything_is_written(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"a\nb\n")
    with open(item["path"], "ab") as f:
        f.write(b"c\n")
    os.utime(item["path"], (item["mtime"], item["mtime"]))  # same mtime: only the length tells
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and "changed while it was copied" in result["error"]
    assert _files(tmp_path / "primary") == [] and _files(tmp_path / "edge") == []


def test_a_small_file_whose_read_fails_leaves_nothing(tmp_path):
    item, data, dests = _tree(tmp_path, data=b"a;1\n" * 1000)
    result = copy_file(item, BreakingLocal(after=100), dests, lambda n: None)
    assert result["status"] == "failed" and "source:" in result["error"]
    assert _files(tmp_path / "primary") == [] and _files(tmp_path / "edge") == []


def _batch(tmp_path, n):
    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    items = []
    for i in range(n):
        path = src / f"traffic_{i}.csv"
        path.write_bytes(b"a;%d\n" % i)
        items.append({"customer": "acme", "domain": "traffic", "source": 0, "path": str(path),
                      "size": path.stat().st_size, "mtime": path.stat().st_mtime})
    dests = [Destination("primary", str(tmp_path / "primary")), Destination("secondary", str(tmp_path / "edge"))]
    for dest in dests:
        dest.open(Settings())
    return items, dests


def _finals(folder) -> list[str]:
    """The files under their final names in ``folder`` (temporary copies left out)."""
    from storage.base import is_temp_name

    return sorted(p.name for p in folder.iterdir() if not is_temp_name(p.name))


def test_a_batch_syncs_each_file_system_once_before_its_renames_and_once_after(tmp_path, monkeypatch):
    """No file is fsynced one by one: one syncfs per destination makes every new copy durable before the first
    rename, and one more the renamed names before copy_files returns."""
    from backup.copy_engine import copy_files
    from storage import local

    if local._SYNCFS is None:
        pytest.fail("this C library has no syncfs(2): the platform this project runs on (Linux) has it")
    items, dests = _batch(tmp_path, 10)
    calls, fsynced = [], []
    real_syncfs, real_fsync = local._syncfs, os.fsync
    folders = {"primary": tmp_path / "primary" / "traffic", "secondary": tmp_path / "edge" / "traffic"}

    def syncfs(fd, what):
        role = next(r for r, f in folders.items() if os.readlink(f"/proc/self/fd/{fd}").startswith(str(f)))
        calls.append((role, what, len(_finals(folders[role]))))
        real_syncfs(fd, what)
    monkeypatch.setattr(local, "_syncfs", syncfs)
    monkeypatch.setattr(local.os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    results = copy_files(items, lambda _: LocalBackend(), dests, lambda n: None)
    assert [r["status"] for r in results] == ["copied"] * 10
    assert fsynced == [], "copies or folders were fsynced one by one"
    for role in folders:  # per destination: before its first rename (no final name yet), after its last one
        assert [(what, finals) for r, what, finals in calls if r == role] == \
            [("sync the new files", 0), (f"sync folder {folders[role]}", 10)], calls
    assert dests[0].backend._deferred is None and dests[0].backend._unsynced is None  # deferring ends with the batch
    dests[0].backend.write_atomic(str(folders["primary"] / "alone.csv"), [b"x\n"])  # one file alone: fsynced at once
    assert len(fsynced) == 2  # the file, then its folder


def test_without_syncfs_each_copy_is_fsynced_and_each_folder_once(tmp_path, monkeypatch):
    """Where the C library has no syncfs: each file is fsynced before its rename, the folder entries of the
    whole batch with one folder fsync each."""
    from backup.copy_engine import copy_files
    from storage import local

    monkeypatch.setattr(local, "_SYNCFS", None)
    items, dests = _batch(tmp_path, 10)
    synced, fsynced = [], []
    real, real_fsync = local._fsync_dir, os.fsync
    monkeypatch.setattr(local, "_fsync_dir", lambda folder: synced.append(folder) or real(folder))
    monkeypatch.setattr(local.os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    results = copy_files(items, lambda _: LocalBackend(), dests, lambda n: None)
    assert [r["status"] for r in results] == ["copied"] * 10
    assert sorted(synced) == sorted([str(tmp_path / "primary" / "traffic"), str(tmp_path / "edge" / "traffic")])
    assert len(fsynced) == 20 + 2  # each copy, then each folder
    assert dests[0].backend._deferred is None  # single renames sync at once again
    dests[0].backend.rename(str(tmp_path / "primary" / "traffic" / "traffic_0.csv"),
                            str(tmp_path / "primary" / "traffic" / "moved.csv"))
    assert synced[-1] == str(tmp_path / "primary" / "traffic")


def _copy_with_failing_syncfs(tmp_path, monkeypatch, fails) -> list[dict]:
    """Three files copied with every syncfs for which ``fails(folder of its fd, what)`` is true failing with EIO."""
    from backup.copy_engine import copy_files
    from storage import local

    items, dests = _batch(tmp_path, 3)
    real = local._syncfs

    def syncfs(fd, what):
        if fails(os.readlink(f"/proc/self/fd/{fd}"), what):
            raise classify(OSError(5, "Input/output error"), what)
        real(fd, what)
    monkeypatch.setattr(local, "_syncfs", syncfs)
    return copy_files(items, lambda _: LocalBackend(), dests, lambda n: None)


def test_new_copies_that_cannot_be_synced_fail_and_are_never_published(tmp_path, monkeypatch):
    """A write-back error reported by the batch's syncfs fails every copy written there; none gets its final
    name, none is left at its temporary one; the other destination's copies are unaffected on disk."""
    results = _copy_with_failing_syncfs(
        tmp_path, monkeypatch, lambda folder, what: folder.startswith(str(tmp_path / "edge"))
        and what == "sync the new files")
    for result in results:
        assert result["status"] == "failed"
        assert result["error"].startswith("secondary: ") and "sync the new files" in result["error"], result["error"]
        assert result["retryable"] is False, result  # EIO is of the fatal family (base.errors): a disk to look at
    assert list((tmp_path / "edge" / "traffic").iterdir()) == []
    assert _finals(tmp_path / "primary" / "traffic") == ["traffic_0.csv", "traffic_1.csv", "traffic_2.csv"]


def test_a_folder_that_cannot_be_synced_fails_its_copies(tmp_path, monkeypatch):
    results = _copy_with_failing_syncfs(
        tmp_path, monkeypatch, lambda folder, what: what.startswith(f"sync folder {tmp_path / 'edge'}"))
    for result in results:
        assert result["status"] == "failed"
        assert result["error"].startswith("secondary: ") and "sync folder" in result["error"], result["error"]


# -- large local files: the kernel's copy ---------------------------------------------------------

def test_a_large_local_file_is_copied_by_the_kernel_after_one_read(tmp_path):
    """A large local source bound for local folders: one read pass hashes and counts it, the kernel makes both
    copies from it (no writer thread), and each copy says how it was checked."""
    from backup import copy_engine

    item, data, dests = _tree(tmp_path)
    assert len(data) > copy_engine.SMALL_FILE_BYTES
    for dest in dests:
        dest.read_back_local = False
    source, seen = CountingLocal(), []
    with _writer_threads() as started:
        result = copy_file(item, source, dests, seen.append)
    assert started == [] and source.opened == [item["path"]] and sum(seen) == len(data)
    assert result["status"] == "copied" and result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["records"] == 300_000 and result["verified_by"] == {"primary": KERNEL_COPY_CHECK,
                                                                      "secondary": KERNEL_COPY_CHECK}
    for root in ("primary", "edge"):
        assert _files(tmp_path / root) == ["traffic/trafic é 1.csv"]
        assert (tmp_path / root / "traffic" / "trafic é 1.csv").read_bytes() == data


class StreamedLocal(LocalBackend):
    """A local folder written through this process (no kernel copy), as a remote destination is."""

    copies_from_files = False


def test_beside_a_destination_the_kernel_cannot_copy_to_every_copy_is_fed_by_the_read(tmp_path):
    """One destination fed by the read pass (as HDFS or SFTP is): the local one is written by its own thread during
    that pass too, not copied by the kernel after it (which would add its time to the file's)."""
    item, data, dests = _tree(tmp_path)
    dests[1].backend = StreamedLocal()
    for dest in dests:
        dest.read_back_local = False
    with _writer_threads() as started:
        result = copy_file(item, CountingLocal(), dests, lambda n: None)
    assert result["status"] == "copied", result["error"]
    assert sorted(os.path.basename(os.path.dirname(os.path.dirname(p))) for p in started) == ["edge", "primary"]
    assert result["verified_by"] == {"primary": "sha256 of the bytes written, synced, size",
                                     "secondary": "sha256 of the bytes written, synced, size"}
    for root in ("primary", "edge"):
        assert (tmp_path / root / "traffic" / "trafic é 1.csv").read_bytes() == data


def test_copy_in_kernel_takes_copy_file_range_else_sendfile_else_none(tmp_path):
    """Same file system: copy_file_range; across file systems (the kernel refuses that with EXDEV): sendfile; a
    stream that is no OS file: None, nothing written.  Real files on this machine's ext4 and tmpfs."""
    data = os.urandom(3 * READ_CHUNK + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    assert shm and os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "needs a second file system at /dev/shm"
    cases = [(tmp_path / "same.bin", "copy_file_range", 0), (tmp_path / "same-5.bin", "copy_file_range", 5),
             (os.path.join(shm, f"mb-kernel-{os.getpid()}.bin"), "sendfile", 0)]
    try:
        for target, call, offset in cases:
            with open(src, "rb") as stream, open(target, "xb") as out:
                assert copy_in_kernel(FileSource(stream, offset), out.fileno()) == call, target
            assert open(target, "rb").read() == data[offset:], target
        with open(tmp_path / "none.bin", "xb") as out:
            assert copy_in_kernel(FileSource(io.BytesIO(data)), out.fileno()) is None
        assert (tmp_path / "none.bin").stat().st_size == 0
        # write_temp of a FileSource that is no OS file: read here in chunks, from its offset
        backend = LocalBackend()
        temp = backend.write_temp(str(tmp_path / "from-bytes.bin"), FileSource(io.BytesIO(data), 7))
        assert open(temp.path, "rb").read() == data[7:] and temp.size == len(data) - 7
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cases[-1][0])


def test_a_kernel_copy_that_fills_its_disk_fails_there_and_leaves_nothing(tmp_path):
    """The primary on a 256 KiB tmpfs (so the copy goes by sendfile, across file systems, until ENOSPC): the
    primary fails with the disk's error and keeps no file, not even a temporary one; the secondary, on another file
    system, is copied; the file fails as a whole (fatal: copying again cannot help until space returns)."""
    item, data, dests = _tree(tmp_path)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        dests[0] = Destination("primary", str(mount / "primary"))
        dests[0].open(Settings())
        result = copy_file(item, LocalBackend(), dests, lambda n: None)
        assert result["status"] == "failed" and result["retryable"] is False, result
        assert result["error"].startswith("primary: FatalError: write ") and "No space left on device" in result["error"]
        assert _files(mount) == [], "nothing left on the full disk"
        assert (tmp_path / "edge" / "traffic" / "trafic é 1.csv").read_bytes() == data
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_large_new_file_left_to_the_batch_sync_has_its_write_back_started_at_once(tmp_path, monkeypatch):
    """While syncs are deferred, a new file of at least WRITEBACK_START_BYTES gets sync_file_range(WRITE) as soon as
    it is written (the kernel starts writing it back while the next files are copied); a small one does not; a file
    written without deferring is fsynced instead.  The real call runs: the spy only records its file."""
    from storage import local

    if local._SYNC_FILE_RANGE is None or local._SYNCFS is None:
        pytest.fail("this C library lacks sync_file_range or syncfs: the deferred-sync path is not tested")
    started = []
    real = local._SYNC_FILE_RANGE
    monkeypatch.setattr(local, "_SYNC_FILE_RANGE", lambda fd, *a: started.append(os.fstat(fd).st_size) or real(fd, *a))
    backend = LocalBackend()
    big, small = b"x" * local.WRITEBACK_START_BYTES, b"y" * (local.WRITEBACK_START_BYTES - 1)
    backend.defer_syncs()
    try:
        for name, data in (("big", big), ("small", small)):
            temp = backend.write_temp(str(tmp_path / name), data)
            with open(tmp_path / f"{name}-src", "wb") as f:
                f.write(data)
            with open(tmp_path / f"{name}-src", "rb") as stream:  # and copied by the kernel
                copied = backend.write_temp(str(tmp_path / f"{name}-copy"), FileSource(stream))
            backend.sync_written()
            backend.publish(temp.path, str(tmp_path / name))
            backend.publish(copied.path, str(tmp_path / f"{name}-copy"))
    finally:
        backend.sync_folders()
    assert started == [len(big), len(big)]
    assert (tmp_path / "big-copy").read_bytes() == big and (tmp_path / "small-copy").read_bytes() == small
    backend.write_atomic(str(tmp_path / "not-deferred"), big)  # fsynced at once, nothing to start
    assert started == [len(big), len(big)]


@pytest.mark.parametrize("recorded", ["right", "wrong"])
def test_a_restore_source_checking_what_is_read_is_never_bypassed_by_the_kernel(tmp_path, recorded):
    """A restore reads each copy through a stream that hashes it against the backup's records (no file descriptor,
    no seek): a large local file is then written from the bytes read through it, never copied by the kernel behind
    its back; a copy that does not match the records fails and nothing is published."""
    from backup.restore_customer_files import _RecordedSource

    item, data, dests = _tree(tmp_path)
    sha = hashlib.sha256(data).hexdigest() if recorded == "right" else "0" * 64
    for dest in dests:
        dest.read_back_local = False
    result = copy_file(item, _RecordedSource(LocalBackend(), {item["path"]: sha}), dests, lambda n: None)
    if recorded == "right":
        assert result["status"] == "copied", result["error"]
        assert set(result["verified_by"].values()) == {"sha256 of the bytes written, synced, size"}
        for root in ("primary", "edge"):
            assert (tmp_path / root / "traffic" / "trafic é 1.csv").read_bytes() == data
    else:
        assert result["status"] == "failed" and "changed since it was verified" in result["error"], result
        assert _files(tmp_path / "primary") == [] and _files(tmp_path / "edge") == []
