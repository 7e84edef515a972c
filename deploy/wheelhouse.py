"""Make the wheelhouse the images install from (``make wheelhouse``; the compose test calls ``ensure_wheelhouse``).

    python deploy/wheelhouse.py <folder>

1. ``pip download --require-hashes`` of every artifact of the three locks (``requirements.lock``,
   ``requirements-test.lock``, ``deploy/build-requirements.lock``): pip checks each file against its hash.
2. The runtime lock's sdists (pyspark: one 456 MB sdist, no wheel on PyPI) are built into wheels **here, on the
   host**, by ``pip wheel --require-hashes`` of the very pin and hash of the lock: pip builds only from the
   sdist whose hash the lock names (or takes the wheel it built from that same sdist before, from its cache:
   pip records the sdist's hash with each cached wheel and checks it).  ``requirements.image.lock`` is then
   written next to the artifacts: ``requirements.lock`` line for line, with the built wheel's sha256 added to
   its pin.  The image build checks that it adds hashes and nothing else (Dockerfile, venv stage) and installs
   from it with ``--require-hashes``.  Why: building pyspark's wheel inside the image build cost about a minute
   of the build's critical path (unpacking and re-zipping 456 MB); on the host it runs beside the base image's
   debootstrap, and on a machine whose virtualenv was made by ``make venv`` it is a copy from pip's cache.

Nothing here reaches anything but PyPI (the host's pip); the image build reaches no index at all.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = (ROOT / "requirements.lock", ROOT / "requirements-test.lock", ROOT / "deploy" / "build-requirements.lock")
IMAGE_LOCK = "requirements.image.lock"
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})")


class WheelhouseError(RuntimeError):
    """pip failed; the message carries its output."""


def _run(argv: list[str], timeout: float, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"{what}: timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        raise WheelhouseError(f"{what}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_lock_text(folder: Path, python: str, timeout: float) -> str:
    """``requirements.lock`` with, for each pin the wheelhouse holds only as an sdist, the hash of its wheel built here.

    One ``pip wheel`` for all of them (one index look-up, one interpreter start)."""
    sdists = {_normalize(p.name[: -len(".tar.gz")].rsplit("-", 1)[0]): p for p in folder.glob("*.tar.gz")}
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    to_build = {}  # normalized name -> lock line
    for line in lines:
        m = _PIN.fullmatch(line)
        sdist = sdists.get(_normalize(m.group(1))) if m else None
        if sdist is not None and _sha256(sdist) == m.group(3):
            to_build[_normalize(m.group(1))] = line
    built = {}
    if to_build:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # same file system: the wheels are renamed
            req = Path(tmp) / "pins.txt"
            req.write_text("\n".join(to_build.values()) + "\n")
            out = Path(tmp) / "out"
            _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--require-hashes", "-w", str(out), "-r", str(req)],
                 timeout, f"pip wheel {sorted(to_build)} (from the locked sdists)")
            for wheel in out.glob("*.whl"):
                built[_normalize(wheel.name.split("-")[0])] = wheel.replace(folder / wheel.name)
    if set(built) != set(to_build):
        raise WheelhouseError(f"pip wheel built {sorted(built)}, not {sorted(to_build)}")
    out_lines = []
    for line in lines:
        m = _PIN.fullmatch(line)
        key = _normalize(m.group(1)) if m else None
        out_lines.append(f"{line} --hash=sha256:{_sha256(built[key])}" if key in built else line)
    return "\n".join(out_lines) + "\n"


def ensure_wheelhouse(folder: Path, python: str = sys.executable, timeout: float = 900) -> str:
    """Every artifact of the locks in ``folder`` plus the image lock; skipped when made for the same locks."""
    stamp = folder / ".locks.sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in LOCKS)).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and (folder / IMAGE_LOCK).exists():
        return "cached"
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for lock in LOCKS:
        _run([python, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "-d", str(folder), "-r", str(lock)],
             timeout, f"pip download -r {lock.name}")
    (folder / IMAGE_LOCK).write_text(image_lock_text(folder, python, timeout))
    # .dockerignore keeps the sdists out of the build context (456 MB): each must have its wheel now.
    built = {_normalize(p.name.split("-")[0]) for p in folder.glob("*.whl")}
    unbuilt = [p.name for p in folder.glob("*.tar.gz") if _normalize(p.name[: -len(".tar.gz")].rsplit("-", 1)[0]) not in built]
    if unbuilt:
        raise WheelhouseError(f"sdists without a wheel (only requirements.lock's are built): {unbuilt}")
    stamp.write_text(digest)
    return "downloaded"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python deploy/wheelhouse.py <folder>")
    print(ensure_wheelhouse(Path(sys.argv[1]).resolve()))
