"""``bench/small_file_floor.py`` measures the least a verified small-file copy costs; these tests hold it to doing
that work: every copy complete under its final name, nothing else left, never a file replaced, a changed source
refused.  A floor that skipped any of it would be a floor of something else."""

from __future__ import annotations

import os

import pytest

from bench.small_file_floor import copy_tree

PROTOCOLS = [False, True, "tmpfile"]  # direct, the guarantee (temporary names), the guarantee by O_TMPFILE


def _tree(root, n: int = 300) -> list[tuple[str, int, float, str]]:
    """``n`` files of 0 to 9,000 bytes (more than one batch of 128), in two customers' folders."""
    items = []
    for i in range(n):
        folder = root / f"customer_{i % 2:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"traffic_{i:04d}.csv"
        path.write_bytes(b"".join(b"%d;4479%08d;CDR\n" % (i, j) for j in range(i * 3)))
        st = path.stat()
        items.append((str(path), st.st_size, st.st_mtime, f"{folder.name}/traffic"))
    return items


def _files(dest) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, name), dest): open(os.path.join(d, name), "rb").read()
            for d, _, names in os.walk(dest) for name in names}


@pytest.mark.parametrize("publish", PROTOCOLS, ids=["direct", "guarantee", "tmpfile"])
def test_every_copy_is_whole_under_its_final_name_and_nothing_else_is_left(tmp_path, publish):
    items = _tree(tmp_path / "src")
    dests = [tmp_path / "one", tmp_path / "two"]
    for d in dests:
        d.mkdir()
    assert copy_tree(items, [str(d) for d in dests], publish) == len(items)
    expected = {f"{folder}/{os.path.basename(path)}": open(path, "rb").read() for path, _, _, folder in items}
    for d in dests:
        assert _files(d) == expected  # byte for byte, and no temporary name left beside them


@pytest.mark.parametrize("publish", PROTOCOLS, ids=["direct", "guarantee", "tmpfile"])
def test_a_file_already_at_a_final_name_is_never_replaced(tmp_path, publish):
    items = _tree(tmp_path / "src", n=5)
    dest = tmp_path / "one"
    (dest / "customer_00" / "traffic").mkdir(parents=True)
    theirs = dest / "customer_00" / "traffic" / "traffic_0002.csv"
    theirs.write_bytes(b"someone else's file\n")
    with pytest.raises(FileExistsError):
        copy_tree(items, [str(dest)], publish)
    assert theirs.read_bytes() == b"someone else's file\n"


def test_a_source_that_changed_since_it_was_listed_is_refused(tmp_path):
    items = _tree(tmp_path / "src", n=3)
    with open(items[1][0], "ab") as f:
        f.write(b"one more record\n")
    (tmp_path / "one").mkdir()
    with pytest.raises(OSError, match="changed while it was read"):
        copy_tree(items, [str(tmp_path / "one")], True)
