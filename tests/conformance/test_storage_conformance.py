"""One behaviour for every storage backend (see conftest.BACKENDS)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import posixpath
import sys
import threading
import time
from urllib.parse import unquote, urlsplit

import pytest

from base.errors import AlreadyExists, ConfigError, InvalidInput, NotFound
from storage import open_backend
from storage.base import FileSource, is_temp_name, temp_name
from storage.local import LocalBackend

MIB = 1024 * 1024
BIG = bytes(range(256)) * (3 * MIB // 256) + b"tail"  # 3 MiB + 4, bigger than any buffer


def chunked(data: bytes, size: int = 256 * 1024):
    """``data`` as a generator of chunks."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def failing(data: bytes, fail_after: int):
    """Yield ``data`` in chunks, then fail once ``fail_after`` bytes are out."""
    sent = 0
    for chunk in chunked(data, 64 * 1024):
        if sent >= fail_after:
            raise RuntimeError("source broke")
        yield chunk
        sent += len(chunk)
    raise RuntimeError("source broke")


def read_all(case, path: str, offset: int = 0) -> bytes:
    with case.backend.open_read(path, offset) as stream:
        return stream.read()


def names(case, folder: str | None = None) -> list[str]:
    return [entry.name for entry in case.backend.list(folder or case.folder)]


# -- round trips -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [
        ("empty.bin", b""),
        ("small.txt", b"hello\n"),
        ("big.bin", BIG),
        ("données été.csv", "é, ü, 東京\n".encode()),
        ("with space and +%#.bin", b"odd characters"),
    ],
    ids=["empty", "small", "3MiB", "unicode", "odd-chars"],
)
def test_round_trip(case, name, data):
    path = case.path(name)
    written = case.backend.write_atomic(path, chunked(data))
    assert written.size == len(data)
    assert not written.is_dir
    assert case.backend.stat(path).size == len(data)
    assert read_all(case, path) == data
    assert case.backend.sha256(path) == hashlib.sha256(data).hexdigest()
    assert names(case) == [name]


def test_write_accepts_one_bytes_object(case):
    path = case.path("one.bin")
    case.backend.write_atomic(path, b"all at once")
    assert read_all(case, path) == b"all at once"


@pytest.mark.parametrize("offset", [0, 5, len(BIG)], ids=["whole", "from 5", "at the end"])
def test_write_from_an_open_local_file(case, tmp_path, offset):
    """A ``FileSource``: every backend stores the file's bytes from the offset on, whatever the stream's position
    (local folders have the kernel copy them, the others read them in chunks), and leaves no temporary file."""
    local = tmp_path / "source.bin"
    local.write_bytes(BIG)
    with open(local, "rb") as stream:
        stream.read(100)  # a position elsewhere than the offset
        written = case.backend.write_atomic(case.path("copy.bin"), FileSource(stream, offset))
    assert written.size == len(BIG) - offset
    assert read_all(case, case.path("copy.bin")) == BIG[offset:]
    assert names(case) == ["copy.bin"]
    with open(local, "rb") as stream:  # and as the copy engine uses it: a temporary copy, published after a check
        temp = case.backend.write_temp(case.path("second.bin"), FileSource(stream), looked=True)
    assert is_temp_name(posixpath.basename(temp.path)) and temp.size == len(BIG)
    case.backend.publish(temp.path, case.path("second.bin"))
    assert case.backend.sha256(case.path("second.bin")) == hashlib.sha256(BIG).hexdigest()


def test_open_read_streams_from_an_offset(case):
    path = case.path("big.bin")
    case.backend.write_atomic(path, chunked(BIG))
    with case.backend.open_read(path, offset=1000) as stream:
        head = stream.read(7)
        pieces = [head]
        while piece := stream.read(100_000):
            pieces.append(piece)
    assert head == BIG[1000:1007]
    assert b"".join(pieces) == BIG[1000:]


def test_open_read_offset_bounds(case):
    path = case.path("f.txt")
    case.backend.write_atomic(path, b"0123456789")
    assert read_all(case, path, 9) == b"9"
    assert read_all(case, path, 10) == b""  # a resumed copy that was complete
    for bad in (11, -1):
        with pytest.raises(InvalidInput):
            read_all(case, path, bad)


def test_open_read_missing_file(case):
    with pytest.raises(NotFound):
        read_all(case, case.path("nope"))


# -- stat, list, glob ------------------------------------------------------


def test_stat(case):
    backend = case.backend
    assert backend.stat(case.path("nope")) is None
    assert backend.stat(case.path("nope", "deeper")) is None
    backend.write_atomic(case.path("f.bin"), b"x" * 1234)
    backend.mkdir(case.path("sub"))
    found = backend.stat(case.path("f.bin"))
    assert (found.size, found.is_dir, found.name) == (1234, False, "f.bin")
    assert abs(found.mtime - time.time()) < 60
    folder = backend.stat(case.path("sub"))
    assert (folder.size, folder.is_dir) == (0, True)


def test_lstat_is_stat_except_that_a_link_is_not_followed(case):
    """What discovery uses on customer source folders: a link (to a folder or to a file outside the tree) is
    reported as one, never followed.  Links exist on this machine's disk: the local and the sftp backends (the
    edge node is this machine); HDFS has none, there lstat is stat."""
    backend = case.backend
    assert backend.lstat(case.path("nope")) is None
    backend.write_atomic(case.path("f.bin"), b"x" * 1234)
    backend.mkdir(case.path("sub"))
    for name in ("f.bin", "sub"):
        plain, own = backend.stat(case.path(name)), backend.lstat(case.path(name))
        assert (own.size, own.is_dir, own.special) == (plain.size, plain.is_dir, None)
    where = urlsplit(backend.uri(case.path("sub")))
    scheme, disk_path = where.scheme, unquote(where.path)
    if scheme in ("file", "sftp"):
        link = posixpath.join(posixpath.dirname(disk_path), "link-to-sub")
        os.symlink(disk_path, link)
        assert backend.stat(case.path("link-to-sub")).is_dir
        found = backend.lstat(case.path("link-to-sub"))
        assert (found.is_dir, found.special) == (False, "symbolic link")
    else:
        assert scheme in ("hdfs", "webhdfs"), scheme


def test_list(case):
    backend = case.backend
    assert backend.list(case.folder) == []
    for name in ("b.txt", "a.txt"):
        backend.write_atomic(case.path(name), name.encode())
    backend.mkdir(case.path("c"))
    entries = backend.list(case.folder)
    assert [(e.name, e.is_dir) for e in entries] == [("a.txt", False), ("b.txt", False), ("c", True)]
    assert all(backend.stat(e.path) == e for e in entries if not e.is_dir)
    with pytest.raises(NotFound):
        backend.list(case.path("nope"))
    with pytest.raises(InvalidInput):
        backend.list(case.path("a.txt"))


def test_glob_matches_names_of_files_directly_inside(case):
    backend = case.backend
    for name in ("a.csv", "b.csv", "c.txt", "A.CSV"):
        backend.write_atomic(case.path(name), b"data")
    backend.mkdir(case.path("d.csv"))  # a folder: never matched
    backend.write_atomic(case.path("d.csv", "inner.csv"), b"data")  # no recursion
    backend.write_atomic(case.path(temp_name("e.csv")), b"in flight")  # our temp
    assert {s.name for s in backend.glob(case.folder, "*.csv")} == {"a.csv", "b.csv"}
    assert {s.name for s in backend.glob(case.folder, "[ab].*")} == {"a.csv", "b.csv"}
    assert {s.name for s in backend.glob(case.folder, "?.txt")} == {"c.txt"}
    assert backend.glob(case.folder, "*.parquet") == []
    with pytest.raises(NotFound):
        backend.glob(case.path("nope"), "*")


def _write_newer(case, path: str, data: bytes, than: float) -> None:
    """Write ``path`` until its mtime is after ``than`` (timestamps are coarse)."""
    deadline = time.monotonic() + 10
    while case.backend.write_atomic(path, data, overwrite=True).mtime <= than:
        assert time.monotonic() < deadline, "storage mtime did not advance"


def test_glob_orders_by_mtime_then_name(case):
    backend = case.backend
    first = backend.write_atomic(case.path("c.log"), b"1")
    _write_newer(case, case.path("b.log"), b"2", than=first.mtime)
    _write_newer(case, case.path("a.log"), b"3", than=backend.stat(case.path("b.log")).mtime)
    found = backend.glob(case.folder, "*.log")
    assert [s.name for s in found] == ["c.log", "b.log", "a.log"]
    assert [s.size for s in found] == [1, 1, 1]


# -- write_atomic ----------------------------------------------------------


def test_write_atomic_refuses_to_replace_a_file(case):
    path = case.path("f.txt")
    case.backend.write_atomic(path, b"first")
    with pytest.raises(AlreadyExists):
        case.backend.write_atomic(path, chunked(b"second, different"))
    assert read_all(case, path) == b"first"
    assert names(case) == ["f.txt"]


def test_write_atomic_overwrite_replaces(case):
    path = case.path("f.txt")
    case.backend.write_atomic(path, b"first")
    written = case.backend.write_atomic(path, b"second!", overwrite=True)
    assert written.size == 7
    assert read_all(case, path) == b"second!"
    assert names(case) == ["f.txt"]


@pytest.mark.parametrize("fail_after", [0, MIB], ids=["at-start", "midway"])
def test_failing_source_leaves_neither_target_nor_temp(case, fail_after):
    with pytest.raises(RuntimeError, match="source broke"):
        case.backend.write_atomic(case.path("f.bin"), failing(BIG, fail_after))
    assert names(case) == []


def test_failing_source_keeps_the_file_it_would_replace(case):
    path = case.path("f.bin")
    case.backend.write_atomic(path, b"keep me")
    with pytest.raises(RuntimeError, match="source broke"):
        case.backend.write_atomic(path, failing(BIG, MIB), overwrite=True)
    assert read_all(case, path) == b"keep me"
    assert names(case) == ["f.bin"]


def test_write_atomic_needs_an_existing_folder(case):
    with pytest.raises(NotFound):
        case.backend.write_atomic(case.path("missing", "f.bin"), b"x")
    assert case.backend.stat(case.path("missing")) is None


def test_write_temp_is_invisible_until_published(case):
    path = case.path("f.bin")
    temp = case.backend.write_temp(path, chunked(BIG))
    assert is_temp_name(temp.name) and temp.size == len(BIG)
    assert case.backend.stat(path) is None and names(case) == [temp.name]
    assert read_all(case, temp.path) == BIG  # what a verification reads before the rename
    case.backend.publish(temp.path, path)
    assert names(case) == ["f.bin"] and read_all(case, path) == BIG


def test_publish_never_replaces_and_removes_its_temp(case):
    path = case.path("f.bin")
    temp = case.backend.write_temp(path, b"mine")
    case.backend.write_atomic(path, b"someone else's")  # appeared between the write and the rename
    with pytest.raises(AlreadyExists):
        case.backend.publish(temp.path, path)
    assert names(case) == ["f.bin"] and read_all(case, path) == b"someone else's"


@pytest.mark.parametrize("rows", [20_000, 1_000_000])
def test_copy_engine_verifies_before_the_rename(case, rows):
    """The copy engine's verification on this backend (HDFS file checksum, remote sha256sum, the SFTP server's
    in-stream SHA-256 for a file of 8 MiB or more, read back) runs at the temporary name: a copy damaged on its
    way into storage fails the file and never gets its final name."""
    from backup.copy_engine import Destination, copy_file
    from storage.sftp import IN_STREAM_MIN_BYTES

    source = case.path("source")
    case.backend.mkdir(source)
    data = b"".join(b"%07d;row\n" % i for i in range(rows))
    case.backend.write_atomic(posixpath.join(source, "f.csv"), data)
    found = case.backend.stat(posixpath.join(source, "f.csv"))
    item = {"domain": "traffic", "path": found.path, "size": found.size, "mtime": found.mtime}
    renamed = []
    real_create, real_rename = case.backend._create, case.backend.rename

    def damaging_create(path, chunks):  # one byte flipped in what the storage keeps
        body = bytearray(b"".join(chunks))
        body[100] ^= 1
        return real_create(path, [bytes(body)])

    def watched_rename(src, dst, **kw):
        renamed.append(dst)
        real_rename(src, dst, **kw)

    case.backend._create, case.backend.rename = damaging_create, watched_rename
    dest = Destination("primary", case.backend.uri(case.path("out")), backend=case.backend, base=case.path("out"))
    result = copy_file(item, case.backend, [dest], lambda n: None)
    assert result["status"] == "failed" and "does not match the source" in result["error"], result["error"]
    assert renamed == [] and names(case, case.path("out", "traffic")) == []
    case.backend._create = real_create  # the storage heals: the next copy is verified and published
    result = copy_file(item, case.backend, [dest], lambda n: None)
    assert result["status"] == "copied", result["error"]
    assert renamed == [case.path("out", "traffic", "f.csv")]
    assert read_all(case, case.path("out", "traffic", "f.csv")) == data
    if case.backend.scheme == "sftp":  # the server hashed a large copy as it wrote it; a small one is read back
        in_stream = len(data) >= IN_STREAM_MIN_BYTES
        assert (result["verified_by"]["primary"] == "sha256 computed by the server as it wrote") == in_stream, result


def test_concurrent_writers_exactly_one_wins(case):
    path = case.path("f.bin")
    # Both writers are past the early existence check once they meet here.
    meet = threading.Barrier(2, timeout=30)
    outcomes: dict[int, object] = {}

    def source(n: int):
        yield bytes([n]) * 1000
        meet.wait()
        yield bytes([n]) * 1000

    def writer(n: int) -> None:
        try:
            outcomes[n] = case.backend.write_atomic(path, source(n))
        except Exception as e:
            outcomes[n] = e

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    losers = [n for n, outcome in outcomes.items() if isinstance(outcome, AlreadyExists)]
    winners = [n for n, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert read_all(case, path) == bytes(winners) * 2000
    assert names(case) == ["f.bin"]


# -- rename, mkdir, delete -------------------------------------------------


def test_rename_moves_a_file(case):
    backend = case.backend
    backend.write_atomic(case.path("a"), b"content")
    backend.rename(case.path("a"), case.path("b"))
    assert backend.stat(case.path("a")) is None
    assert read_all(case, case.path("b")) == b"content"


def test_rename_refuses_an_existing_destination(case):
    backend = case.backend
    backend.write_atomic(case.path("a"), b"A")
    backend.write_atomic(case.path("b"), b"B")
    with pytest.raises(AlreadyExists):
        backend.rename(case.path("a"), case.path("b"))
    assert (read_all(case, case.path("a")), read_all(case, case.path("b"))) == (b"A", b"B")


def test_rename_overwrite_replaces_a_file(case):
    backend = case.backend
    backend.write_atomic(case.path("a"), b"A")
    backend.write_atomic(case.path("b"), b"B")
    backend.rename(case.path("a"), case.path("b"), overwrite=True)
    assert names(case) == ["b"]
    assert read_all(case, case.path("b")) == b"A"


@pytest.mark.parametrize("overwrite", [False, True])
def test_rename_never_moves_into_or_replaces_a_folder(case, overwrite):
    backend = case.backend
    backend.write_atomic(case.path("a"), b"A")
    backend.mkdir(case.path("d"))
    with pytest.raises(AlreadyExists):
        backend.rename(case.path("a"), case.path("d"), overwrite=overwrite)
    assert names(case) == ["a", "d"]
    assert names(case, case.path("d")) == []


def test_rename_missing_source_or_destination_folder(case):
    backend = case.backend
    with pytest.raises(NotFound):
        backend.rename(case.path("nope"), case.path("b"))
    backend.write_atomic(case.path("a"), b"A")
    with pytest.raises(NotFound):
        backend.rename(case.path("a"), case.path("missing", "b"))
    assert names(case) == ["a"]


def test_rename_moves_a_folder(case):
    backend = case.backend
    backend.mkdir(case.path("d1"))
    backend.write_atomic(case.path("d1", "f"), b"F")
    backend.rename(case.path("d1"), case.path("d2"))
    assert names(case) == ["d2"]
    assert read_all(case, case.path("d2", "f")) == b"F"


def test_mkdir(case):
    backend = case.backend
    backend.mkdir(case.path("a", "b", "c"))
    backend.mkdir(case.path("a", "b", "c"))  # exists: fine
    assert backend.stat(case.path("a", "b", "c")).is_dir
    backend.write_atomic(case.path("f"), b"x")
    with pytest.raises(AlreadyExists):
        backend.mkdir(case.path("f"))
    with pytest.raises(InvalidInput):
        backend.mkdir(case.path("f", "sub"))


def test_delete(case):
    backend = case.backend
    backend.write_atomic(case.path("f"), b"x")
    backend.delete(case.path("f"))
    backend.delete(case.path("f"))  # already gone: fine
    backend.delete(case.path("never", "was"))
    backend.mkdir(case.path("empty"))
    backend.delete(case.path("empty"))
    backend.mkdir(case.path("full", "deeper"))
    backend.write_atomic(case.path("full", "deeper", "f"), b"x")
    with pytest.raises(InvalidInput):
        backend.delete(case.path("full"))
    assert backend.stat(case.path("full", "deeper", "f")) is not None
    backend.delete(case.path("full"), recursive=True)
    assert names(case) == []


# -- temporary files -------------------------------------------------------


def test_remove_stale_temps(case):
    backend = case.backend
    stale = [temp_name("a.csv"), temp_name("b.csv")]
    kept = ["a.csv", ".hidden", "notes.part", ".x.part"]
    for name in stale + kept:
        backend.write_atomic(case.path(name), b"x")
    assert all(is_temp_name(name) for name in stale)
    assert not any(is_temp_name(name) for name in kept)
    assert backend.remove_stale_temps(case.folder, older_than=3600) == 0
    assert backend.remove_stale_temps(case.folder) == 2
    assert names(case) == sorted(kept)
    assert backend.remove_stale_temps(case.folder) == 0


# -- paths and URIs ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["nul\x00byte", "new\nline", "tab\there", "del\x7f"])
def test_control_characters_in_paths_are_refused(case, bad):
    backend = case.backend
    path = case.path(bad)
    calls = [
        lambda: backend.stat(path),
        lambda: backend.list(path),
        lambda: read_all(case, path),
        lambda: backend.write_atomic(path, b"x"),
        lambda: backend.mkdir(path),
        lambda: backend.rename(path, case.path("ok")),
        lambda: backend.rename(case.path("ok"), path),
        lambda: backend.delete(path),
        lambda: backend.sha256(path),
        lambda: backend.uri(path),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()
    assert names(case) == []


def test_uri_opens_the_same_file_again(case):
    path = case.path("données été 2024.csv")
    case.backend.write_atomic(path, b"same file")
    uri = case.backend.uri(path)
    assert uri.startswith(case.backend.scheme + "://")
    assert " " not in uri
    again, again_path = open_backend(uri, **case.options)
    with again:
        assert type(again) is type(case.backend)
        assert again.stat(again_path).size == len(b"same file")
        assert again.uri(again_path) == uri


# -- choosing a backend by URL (no backend needed) ---------------------------


def test_open_backend_plain_paths_and_file_urls(tmp_path):
    backend, path = open_backend("relative/dir")
    assert isinstance(backend, LocalBackend)
    assert path == os.path.abspath("relative/dir")
    assert open_backend("file:///srv/a%20b/")[1] == "/srv/a b"
    assert open_backend("file://localhost/srv/x")[1] == "/srv/x"
    assert open_backend("FILE:///srv/x")[1] == "/srv/x"
    with pytest.raises(ConfigError):
        open_backend("file://elsewhere/srv/x")
    with pytest.raises(ConfigError):
        open_backend(str(tmp_path), user="someone")


def test_local_uri_is_the_uri_pathlib_gives_and_opens_the_same_path(tmp_path):
    """The local URI is built without a ``Path`` (three per file copied); it must stay what ``Path.as_uri`` gives."""
    backend = LocalBackend()
    odd = ["/srv/a b/données été.csv", "/srv/100%/x#1?.csv", "//srv/two/leading", "/srv/./dot/../up/",
           "relative/sub/file.csv", str(tmp_path / "plain.csv")]
    for path in odd:
        uri = backend.uri(path)
        assert uri == Path(os.path.abspath(path)).as_uri(), path
        assert open_backend(uri)[1] == os.path.abspath(path), path
    not_utf8 = "/srv/" + os.fsdecode(b"latin1-\xe9.csv")  # quoted byte by byte, as pathlib does
    assert backend.uri(not_utf8) == Path(not_utf8).as_uri() == "file:///srv/latin1-%E9.csv"


def test_open_backend_hdfs_schemes():
    backend, path = open_backend("hdfs://namenode:50070/backups/x%20y")
    with backend:
        assert backend.scheme == "webhdfs"
        assert path == "/backups/x y"
        assert backend.uri(path) == "webhdfs://namenode:50070/backups/x%20y"
    backend, path = open_backend("webhdfs://namenode")
    with backend:
        assert path == "/"
        assert backend.uri("/a") == "webhdfs://namenode:9870/a"
    with pytest.raises(ConfigError, match="usr"):
        open_backend("webhdfs://namenode/x", usr="typo")
    backend, _ = open_backend("webhdfs://namenode/x")
    with backend, pytest.raises(InvalidInput):
        backend.stat("relative/path")  # would resolve against an HDFS home folder


def test_open_backend_refuses_unknown_schemes_and_bad_paths():
    with pytest.raises(ConfigError, match="'s3'"):
        open_backend("s3://bucket/key")
    for bad in ("/srv/a\x00b", "file:///srv/a%00b", "webhdfs://nn/a%0Ab", "/srv/a\nb"):
        with pytest.raises(InvalidInput):
            open_backend(bad)


def test_open_backend_kerberos_needs_requests_kerberos(monkeypatch):
    monkeypatch.setitem(sys.modules, "requests_kerberos", None)  # import fails
    monkeypatch.delitem(sys.modules, "hdfs.ext.kerberos", raising=False)
    with pytest.raises(ConfigError, match="requests-kerberos"):
        open_backend("webhdfs://namenode/x", kerberos=True)


def test_open_backend_unavailable_module_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "storage.sftp", None)  # import fails
    with pytest.raises(ConfigError, match="sftp"):
        open_backend("sftp://backup@host:22/x")
