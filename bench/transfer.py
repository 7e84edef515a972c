"""Transfer benchmark: the edge-export transfer phase on a 1 GiB file vs OpenSSH, same server, same cipher.

Sides, alternating round by round so machine noise hits all alike (medians reported):
- ``scp``: bare ``scp -s`` (no verification at all): the bar;
- ``careful_operator``: what an operator does by hand for a verified copy: scp to a temp name,
  ``ssh sha256sum`` of it, local ``sha256sum``, ``ssh mv`` into place;
- ``phase_in_stream``: the transfer phase's work with the default ``sftp.verify: in-stream``
  (upload through the server's receiver, which hashes what it writes; size check; rename);
- ``phase_read_back``: the same with ``sftp.verify: read-back`` (scp -s, then ``sha256sum`` of
  the temp file on the server; the phase before this change);
- the bare upload engines (``openssh`` in-stream upload, ``paramiko_1``/``paramiko_2``).
The local SHA-256 is not in the phase: the export computed it while writing the archive.
Target (issue 18): the in-stream phase >= 0.85x bare scp.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import uuid

from common import OUT, emit, median, settings, timed

CIPHER = "aes128-gcm@openssh.com"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", action="store_true", help="also time the bare paramiko engines")
    a = ap.parse_args()
    s = settings()
    from connectors.sftp import SftpTarget, local_sha256, upload, verify_and_commit

    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / f"transfer-{a.mib}MiB.bin"
    if not src.exists() or src.stat().st_size != a.mib * 2**20:
        with open(src, "wb") as f:  # incompressible, like a gzip archive
            for _ in range(a.mib):
                f.write(os.urandom(2**20))
    size_mb = src.stat().st_size / 1e6
    sha = local_sha256(src)
    remote = f"{s.sftp.remote_dir}/bench"
    user = s.sftp.user or os.environ.get("USER", "root")
    key, known = str(s.path(s.sftp.key_file)), str(s.path(s.sftp.known_hosts))
    opts = ["-F", "/dev/null", "-c", CIPHER, "-i", key, "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    at = f"{user}@{s.sftp.host}"

    def sh(*command: str) -> str:
        return subprocess.run(["ssh", *opts, "-p", str(s.sftp.port), at, " ".join(command)], check=True,
                              capture_output=True, text=True).stdout

    def scp() -> None:
        subprocess.run(["scp", "-s", "-q", *opts, "-P", str(s.sftp.port), str(src), f"{at}:{remote}/scp.bin"],
                       check=True)

    def careful_operator() -> None:
        tmp, final = f"{remote}/op-{uuid.uuid4().hex}.part", f"{remote}/op-{uuid.uuid4().hex}.bin"
        subprocess.run(["scp", "-s", "-q", *opts, "-P", str(s.sftp.port), str(src), f"{at}:{tmp}"], check=True)
        theirs = sh("sha256sum", tmp).split()[0]
        ours = subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, text=True).stdout.split()[0]
        assert theirs == ours
        sh("mv", tmp, final, "&&", "rm", final)

    def phase(verify: str):
        target = SftpTarget.from_settings(settings({"sftp": {"verify": verify}}))

        def run() -> None:  # as transfer_phase: one control connection around the upload
            tmp, final = f"{remote}/wf-{uuid.uuid4().hex}.part", f"{remote}/wf-{uuid.uuid4().hex}.bin"
            with target.connect() as sess:
                sess.remove(tmp)
                uploaded = upload(target, src, tmp)
                assert verify_and_commit(sess, tmp, final, sha, lambda: None, uploaded) == "committed"
                sess.remove(final)  # one round trip, not in the phase
        return run

    sides = {"scp": scp, "careful_operator": careful_operator, "phase_in_stream": phase("in-stream"),
             "phase_read_back": phase("read-back")}
    if a.engines:
        for name, over in {"paramiko_1": {"engine": "paramiko", "streams": 1, "verify": "read-back"},
                           "paramiko_2": {"engine": "paramiko", "streams": 2}}.items():
            t = SftpTarget.from_settings(settings({"sftp": over}))
            sides[name] = lambda t=t, name=name: upload(t, src, f"{remote}/{name}.part")
    with SftpTarget.from_settings(s).connect() as sess:
        sess.makedirs(remote)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(a.rounds):
        for name, fn in sides.items():
            os.sync()  # untimed: each side starts with no dirty pages of the one before to write back
            times[name].append(timed(fn)[0])
    mbps = {k: round(size_mb / median(v), 1) for k, v in times.items()}
    emit({"bench": "transfer", "file_mb": round(size_mb), "cipher": CIPHER, "rounds": a.rounds,
          "seconds": {k: round(median(v), 2) for k, v in times.items()}, "mb_per_s": mbps,
          "ratio_vs_scp": {k: round(v / mbps["scp"], 2) for k, v in mbps.items() if k != "scp"},
          "target": "phase_in_stream >= 0.85x scp"})


if __name__ == "__main__":
    main()
