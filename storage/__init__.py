"""Storage backends, chosen by URL scheme.

    /data/backups, file:///data/backups      -> storage.local.LocalBackend
    webhdfs://namenode:9870/backups          -> storage.webhdfs.WebHdfsBackend
    hdfs://namenode:9870/backups             -> the same (the port is the HTTP one)
    sftp://user@host:22/backups              -> storage.sftp.SftpBackend

Backend modules are imported only when their scheme is used, so a worker
without the ``hdfs`` or ``paramiko`` package can still use the others.
"""

from __future__ import annotations

import importlib

from base.urls import url_scheme
from base.errors import ConfigError
from storage.base import FileStat, StorageBackend, check_path

__all__ = ["FileStat", "StorageBackend", "open_backend"]

# scheme -> "module:Class", resolved lazily like celery's result backend aliases.
BACKENDS = {
    "file": "storage.local:LocalBackend",
    "webhdfs": "storage.webhdfs:WebHdfsBackend",
    "hdfs": "storage.webhdfs:WebHdfsBackend",
    "swebhdfs": "storage.webhdfs:WebHdfsBackend",  # WebHDFS over https, certificate verified
    "sftp": "storage.sftp:SftpBackend",
}



def open_backend(url: str, **options) -> tuple[StorageBackend, str]:
    """Open the backend for ``url``; return it and the URL's base path."""
    url = check_path(url)
    # No "scheme://": a plain path, or the short "file:/path" form.
    scheme = url_scheme(url)
    target = BACKENDS.get(scheme)
    if target is None:
        raise ConfigError(f"unknown storage scheme {scheme!r} in {url!r}; known: {sorted(BACKENDS)}")
    module_name, class_name = target.split(":")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"storage scheme {scheme!r} is unavailable ({target}): {e}") from e
    return backend_class.from_url(url, **options)
