"""Transfer benchmark: the workflow's upload of a 1 GiB file vs OpenSSH scp, same server, same cipher.

Rounds alternate scp and each engine so that machine noise hits all alike;
medians are reported.  "workflow" adds what the transfer phase does on top of
the upload: remote sha256sum of the temp file and the rename into place.
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
    ssh_opts = ["-P", str(s.sftp.port), "-i", str(s.path(s.sftp.key_file)),
                "-o", f"UserKnownHostsFile={s.path(s.sftp.known_hosts)}", "-o", "StrictHostKeyChecking=yes"]

    def scp() -> None:
        subprocess.run(["scp", "-q", "-c", CIPHER, *ssh_opts, str(src), f"{user}@{s.sftp.host}:{remote}/scp.bin"],
                       check=True)

    engines = {
        "paramiko_1": settings({"sftp": {"engine": "paramiko", "streams": 1}}),
        "paramiko_2": settings({"sftp": {"engine": "paramiko", "streams": 2}}),
        "openssh": settings({"sftp": {"engine": "openssh"}}),
    }
    with SftpTarget.from_settings(s).connect() as sess:
        sess.makedirs(remote)
    times: dict[str, list[float]] = {k: [] for k in ["scp", *engines, "workflow_default"]}
    for _ in range(a.rounds):
        times["scp"].append(timed(scp)[0])
        for name, es in engines.items():
            t = SftpTarget.from_settings(es)
            times[name].append(timed(upload, t, src, f"{remote}/{name}.part")[0])
        target = SftpTarget.from_settings(s)

        def workflow() -> None:
            tmp, final = f"{remote}/wf-{uuid.uuid4().hex}.part", f"{remote}/wf-{uuid.uuid4().hex}.bin"
            upload(target, src, tmp)
            with target.connect() as sess:
                verify_and_commit(sess, tmp, final, sha, lambda: None)
                sess.remove(final)
        times["workflow_default"].append(timed(workflow)[0])
    mbps = {k: round(size_mb / median(v), 1) for k, v in times.items()}
    emit({"bench": "transfer", "file_mb": round(size_mb), "cipher": CIPHER, "rounds": a.rounds,
          "default_engine": s.sftp.engine, "mb_per_s": mbps,
          "ratio_vs_scp": {k: round(v / mbps["scp"], 2) for k, v in mbps.items() if k != "scp"},
          "target": "upload >= 0.9x scp"})


if __name__ == "__main__":
    main()
