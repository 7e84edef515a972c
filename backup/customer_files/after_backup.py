"""What happens to a source file once every copy it has (primary, and secondary if configured) is verified: left alone, deleted, or moved (``after_backup``).

A move is a rename on the source's own storage (``move_to`` must be on the same storage: no
copy, no second read); it lands in ``<move_to>/<customer>/<domain>/<file>``.  A failure here
never undoes the backup: it is the file's ``error``, and its status stays copied or present.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

from base.errors import BackupError, ConfigError
from backup.resources import Resources
from config.settings import CustomerFilesSettings
from storage import StorageBackend
from storage.locations import open_location


def _storage_of(uri: str) -> tuple[str, str]:
    """(scheme, host) of a URI: two paths can be renamed into each other only on the same storage."""
    parts = urlsplit(uri)
    return parts.scheme, parts.netloc


def move_base(res: Resources, cfg: CustomerFilesSettings) -> tuple[tuple[str, str], str] | None:
    """Storage and folder receiving moved sources (after_backup: move), else None."""
    if cfg.after_backup != "move":
        return None
    mover, base = open_location(res.settings, cfg.move_to)
    with mover:
        return _storage_of(mover.uri(base)), base


def after_backup(cfg: CustomerFilesSettings, source: StorageBackend, item: dict,
                 moved_to: tuple[tuple[str, str], str] | None) -> str | None:
    """Move or delete a source file whose copies are both verified; returns an error line or None."""
    try:
        if cfg.after_backup == "delete":
            source.delete(item["path"])
        elif cfg.after_backup == "move":
            storage, base = moved_to
            if storage != _storage_of(source.uri(item["path"])):
                raise ConfigError("customer_files.move_to must be on the same storage as the source folders")
            folder = posixpath.join(base, item["customer"], item["domain"])
            source.mkdir(folder)
            source.rename(item["path"], posixpath.join(folder, posixpath.basename(item["path"])))
    except BackupError as e:
        return f"after_backup {cfg.after_backup}: {e.one_line()}"
    return None

