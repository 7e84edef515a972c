"""The floor of a verified small-file copy: the system calls the guarantee needs, from Python, with nothing else.

Issue 18 asks customer-files to copy 50,000 files of 1-8 KB to two local folders in at most 1.5x the time of
``cp -r`` to both.  This bench measures, side by side in one run on the same tree (``customer_files.py --small``'s),
what any Python worker keeping customer-files' promises must do per file at the least, against ``cp -r``:

  * ``cp_r``: ``cp -r`` of the tree to two folders (the issue's floor), and the same followed by ``sync``;
  * ``direct``: one Python loop, per file: open and read the source whole, SHA-256 and count its lines, stat it
    again (unchanged?), and per destination create the final name (``O_EXCL``), write, fstat (the size check),
    close; one ``syncfs`` per destination at the end.  No temporary name: what ``cp`` does, plus the hash, the
    count and the sync;
  * ``guarantee``: the same, but each copy is written under a temporary name, the batch made durable by one
    ``syncfs`` before any copy is published, then published by ``link`` (never replacing a file) and ``unlink``
    of the temporary name, and the folders made durable by a second ``syncfs``: the protocol of
    ``storage.local`` that makes a final name only ever hold a complete, durable, verified copy;
  * ``guarantee_2proc``: ``guarantee`` split over two processes by customer, as the workflow's two workers split
    it on two cores;
  * ``tmpfile_2proc``: the same guarantee by the cheapest protocol Linux has for it, on two processes: each copy
    written to an unnamed file (``O_TMPFILE``), the batch synced, then each named by one ``linkat`` (never
    replacing a file) and the folders synced.  No temporary name is created or removed.  ``storage.local`` does
    not do this (its temporary names are what the conformance suite, the sweep of dead writers' files and a
    read-back check work with); the side says what the protocol itself could save.

None of them touches Redis, Celery or Hive: the workflow's bookkeeping, its ledger, results, manifest and the
count load all come on top.  Rounds rotate the order of the sides; before each, as root, the page cache is emptied
and the source read into it again (``customer_files.warm``), and the copies of every side are set aside and deleted
after all timings (``customer_files.set_aside``).  One JSON line: medians, the CPU of the Python sides (user and
system, all processes) and each side's ratio to ``cp -r``.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import multiprocessing
import os
import resource
import time
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)  # syncfs(2): os has no syncfs before Python 3.12
BATCH = 128  # files made durable and published together, as the copy engine's batches
OPEN_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _read(path: str, size: int) -> bytes:
    fd = os.open(path, OPEN_SOURCE)
    try:
        data = os.read(fd, size + 1)
        while len(data) <= size:  # a short read: read on (a file that grew is seen by its length)
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return data


def _fill(fd: int, data: bytes, where: str) -> None:
    """Write all of ``data`` to the new file ``fd``, then the size check."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if os.fstat(fd).st_size != len(data):
        raise OSError(f"{where}: short copy")


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, CREATE, 0o644)
    try:
        _fill(fd, data, path)
    finally:
        os.close(fd)


def _write_unnamed(folder: str, data: bytes) -> int:
    """An unnamed new file in ``folder`` (``O_TMPFILE``) holding ``data``, size-checked; its open descriptor."""
    fd = os.open(folder, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
    try:
        _fill(fd, data, folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _source(path: str, size: int, mtime: float) -> tuple[bytes, str, int]:
    data = _read(path, size)
    digest, records = hashlib.sha256(data).hexdigest(), data.count(b"\n")
    after = os.stat(path)
    if (after.st_size, after.st_mtime, len(data)) != (size, mtime, size):
        raise OSError(f"{path} changed while it was read")
    return data, digest, records


def _syncfs(fd: int) -> None:
    if _LIBC.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def copy_tree(items: list[tuple[str, int, float, str]], dests: list[str], publish: bool | str) -> int:
    """Copy ``items`` (path, size, mtime, folder under each destination) to every destination; files copied.

    ``publish``: temporary names, one syncfs before the links, link + unlink, one syncfs after (the guarantee);
    ``"tmpfile"``: the same with unnamed files named by one ``linkat``; else the final names directly and one
    syncfs at the end (``direct``)."""
    made: set[str] = set()
    sync_fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in dests]
    done = 0
    try:
        for start in range(0, len(items), BATCH):
            pending = []
            for path, size, mtime, folder in items[start:start + BATCH]:
                data, _, _ = _source(path, size, mtime)
                name = os.path.basename(path)
                for dest in dests:
                    where = f"{dest}/{folder}"
                    if where not in made:
                        os.makedirs(where, exist_ok=True)
                        made.add(where)
                    final = f"{where}/{name}"
                    if publish == "tmpfile":
                        pending.append((_write_unnamed(where, data), final))
                    elif publish:
                        temp = f"{where}/.{name}.{os.urandom(8).hex()}.part"
                        _write(temp, data)
                        pending.append((temp, final))
                    else:
                        _write(final, data)
                done += 1
            if publish:
                for fd in sync_fds:  # every copy of the batch durable before any final name exists
                    _syncfs(fd)
                for temp, final in pending:
                    if isinstance(temp, int):  # an unnamed file's descriptor: named now (linkat, AT_SYMLINK_FOLLOW)
                        try:
                            os.link(f"/proc/self/fd/{temp}", final, src_dir_fd=sync_fds[0], follow_symlinks=True)
                        finally:
                            os.close(temp)
                        continue
                    os.link(temp, final)  # fails if the final name exists: never replaces a file
                    os.unlink(temp)
                for fd in sync_fds:  # the names durable before the batch is reported
                    _syncfs(fd)
        if not publish:
            for fd in sync_fds:
                _syncfs(fd)
    finally:
        for fd in sync_fds:
            os.close(fd)
    return done


def _child(args) -> tuple[int, float, float]:
    items, dests, publish = args
    before = resource.getrusage(resource.RUSAGE_SELF)
    done = copy_tree(items, dests, publish)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return done, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def run_python(items: list, out: Path, publish: bool | str, processes: int) -> dict:
    """One Python side: wall seconds and CPU (user, system) of its processes."""
    from customer_files import set_aside

    set_aside(out)
    dests = [str(out / "one"), str(out / "two")]
    for d in dests:
        os.makedirs(d)
    # Split by customer, as the workflow's copy tasks are (one per customer).
    shares = [[it for it in items if int(it[3].split("/")[0][-2:]) % processes == k] for k in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        t0 = time.perf_counter()
        parts = pool.map(_child, [(share, dests, publish) for share in shares])
        wall = time.perf_counter() - t0
    done = sum(p[0] for p in parts)
    if done != len(items):
        raise SystemExit(f"small_file_floor: {done} of {len(items)} files copied")
    copied = sum(len(files) for d in dests for _, _, files in os.walk(d))
    if copied != 2 * len(items):  # every copy is there, under its final name, and nothing else
        raise SystemExit(f"small_file_floor: {copied} files in the destinations, expected {2 * len(items)}")
    set_aside(out)
    return {"s": wall, "user_s": sum(p[1] for p in parts), "sys_s": sum(p[2] for p in parts)}


def run_cp(src: Path, out: Path) -> dict:
    """``cp -r`` to both folders, and the same followed by ``sync`` (``customer_files.run_cp_floor``, which warms the
    source itself)."""
    from customer_files import run_cp_floor

    seconds, durable = run_cp_floor(src, out)
    return {"s": seconds, "then_sync_s": durable}


def main() -> None:
    # The bench's siblings, imported here: the copy functions above are imported by the unit tests too.
    from common import emit, median, rotated
    from customer_files import SMALL_WORK, domain_of, empty_trash, make_small_tree, warm

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    src = SMALL_WORK / f"src-small-{a.files}"  # customer_files.py --small's tree of that size
    files = make_small_tree(src, a.customers, a.files)
    items = []
    for path, size in files.items():
        st = path.stat()
        items.append((str(path), size, st.st_mtime, f"{path.parent.name}/{domain_of(path.name)}"))
    out = SMALL_WORK / "floor"
    sides = {
        "cp_r": lambda: run_cp(src, out),
        "direct": lambda: run_python(items, out, publish=False, processes=1),
        "guarantee": lambda: run_python(items, out, publish=True, processes=1),
        "guarantee_2proc": lambda: run_python(items, out, publish=True, processes=2),
        "tmpfile_2proc": lambda: run_python(items, out, publish="tmpfile", processes=2),
    }
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        for round_ in range(a.rounds):
            for name in rotated(list(sides), round_):
                if name != "cp_r":  # run_cp_floor warms the source itself
                    warm(src)
                runs[name].append(sides[name]())
    finally:
        empty_trash()
    cp_s = median([r["s"] for r in runs["cp_r"]])
    record = {"bench": "small_file_floor", "files": len(items), "rounds": a.rounds,
              "cp_r_s": round(cp_s, 2), "cp_r_then_sync_s": round(median([r["then_sync_s"] for r in runs["cp_r"]]), 2)}
    for name in ("direct", "guarantee", "guarantee_2proc", "tmpfile_2proc"):
        wall = median([r["s"] for r in runs[name]])
        # Also each round's own ratio (the side against the cp -r of the same round), whose median the machine's
        # swings between rounds move less.
        per_round = [r["s"] / c["s"] for r, c in zip(runs[name], runs["cp_r"])]
        record[name] = {"s": round(wall, 2), "over_cp_r": round(wall / cp_s, 2),
                        "over_cp_r_per_round": round(median(per_round), 2),
                        "user_s": round(median([r["user_s"] for r in runs[name]]), 2),
                        "sys_s": round(median([r["sys_s"] for r in runs[name]]), 2),
                        "all_rounds_s": [round(r["s"], 2) for r in runs[name]]}
    record["cp_r_all_rounds_s"] = [round(r["s"], 2) for r in runs["cp_r"]]
    record["target"] = "the workflow <= 1.5x cp -r (issue 18): these sides do only the copies' system calls"
    emit(record)


if __name__ == "__main__":
    main()
