"""Record counting of delivered text files the way the legacy job counts: ``wc -l`` plus an unterminated last line.

Counting is fed chunk by chunk from a read pass that happens anyway (the copy engine's), so it
costs one ``bytes.count`` per chunk and never a read of its own.
"""

from __future__ import annotations


def count_records(data: bytes) -> int:
    """Lines in ``data`` the way the backup counts them (see ``RecordCounter``)."""
    counter = RecordCounter()
    counter.update(data)
    return counter.records


class RecordCounter:
    """Counts records fed chunk by chunk: newline-terminated lines, plus an unterminated last line.

    CRLF ends a line once (its LF is counted); an empty input has 0 records.
    """

    def __init__(self) -> None:
        self.newlines = 0
        self.size = 0
        self._last = b""

    def update(self, chunk: bytes) -> None:
        """Count one chunk."""
        if chunk:
            self.newlines += chunk.count(b"\n")
            self.size += len(chunk)
            self._last = chunk[-1:]

    @property
    def records(self) -> int:
        """Records seen so far."""
        return self.newlines + (1 if self.size and self._last != b"\n" else 0)

