"""Configured locations opened as storage backends: the settings' SFTP key and HDFS Kerberos wired in.

A location is a URL or a plain path from the config (``customer_files.source_dirs``, a
customer's primary or secondary, ``move_to``, ``status_flag``).  Opening one costs what its
backend's ``from_url`` costs: nothing for a local folder, an SSH handshake for SFTP.
"""

from __future__ import annotations

from base.urls import url_scheme
from config.settings import Settings
from storage import StorageBackend, open_backend


def storage_options(settings: Settings, url: str) -> dict:
    """``open_backend`` options for a location: SFTP gets the configured key, known_hosts and timeouts,
    HDFS Kerberos if configured."""
    scheme = url_scheme(url)
    if scheme in ("hdfs", "webhdfs", "swebhdfs"):
        cfg = settings.customer_files
        return {"kerberos": True} if cfg is not None and cfg.hdfs_kerberos else {}
    if scheme != "sftp":
        return {}
    passphrase = settings.secret("BACKUP_SFTP_KEY_PASSPHRASE")
    return {"key_file": str(settings.path(settings.sftp.key_file)),
            "known_hosts": str(settings.path(settings.sftp.known_hosts)),
            "connect_timeout": settings.sftp.connect_timeout,
            "stall_timeout": settings.sftp.stall_timeout,
            "passphrase": passphrase.get_secret_value() if passphrase else None}


def open_location(settings: Settings, url: str, budget_for=None) -> tuple[StorageBackend, str]:
    """Open a configured location; a relative plain path resolves against ``base_dir``.

    ``budget_for(host, port)``: the shared bandwidth budget of an SFTP host (``Resources.bandwidth_budget``),
    applied to every write to it; None (or a host without one): unpaced.
    """
    if "://" not in url and not url.lower().startswith("file:"):
        url = str(settings.path(url))
    backend, base = open_backend(url, **storage_options(settings, url))
    if budget_for is not None and url_scheme(url) == "sftp":
        backend.set_pace(budget_for(backend.host, backend.port))
    return backend, base
