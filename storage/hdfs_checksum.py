"""HDFS file checksums computed locally, so a copy to HDFS is verified without reading it back.

HDFS keeps a CRC of every ``bytes-per-checksum`` chunk of a block beside the block.  Its file
checksum (WebHDFS ``GETFILECHECKSUM``, ``hdfs dfs -checksum``) is built from those CRCs by the
DataNodes, reading only the CRC files, never the data:

``MD5MD5CRC`` (the default combine mode)
    per block: MD5 of the block's chunk CRCs (4 bytes each, big-endian); per file: MD5 of the
    blocks' MD5s *and the zero bytes after them in the client's buffer*: Hadoop digests
    ``DataOutputBuffer.getData()``, the whole backing array, which starts at 32 bytes and doubles
    (an empty file: the MD5 of 32 zero bytes).  Reported as ``MD5-of-<crcPerBlock>MD5-of-<bytesPerCRC><CRC32|CRC32C>`` with
    bytes ``<bytesPerCRC:int32><crcPerBlock:int64><md5>``; ``crcPerBlock`` is the chunk count of a
    full block when the file has more than one block, else 0.  It depends on the block size.
``COMPOSITE_CRC`` (``dfs.checksum.combine.mode``)
    the CRC of the whole content, whatever the block layout: ``COMPOSITE-<CRC32|CRC32C>``, 4 bytes.

``HdfsChecksummer`` computes both in the single read pass of the source that already feeds
SHA-256 and the record count (DistCp verifies copies the same way).  Cost: one C CRC call per
512-byte chunk, about 0.5 s per GiB on this machine's class of CPU, plus an MD5 of 1/128 of the
data.  Where the cluster answers with an algorithm not computed here (another bytes-per-checksum
or block size than the copy was written with, a file written by someone else), ``matches``
returns None and the caller reads the copy back instead.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

try:  # the C implementation; without it CRC32C files fall back to reading back
    import google_crc32c

    _CRC32C = google_crc32c.value if google_crc32c.implementation == "c" else None
    _CRC32C_EXTEND = google_crc32c.extend if google_crc32c.implementation == "c" else None
except ImportError:  # pragma: no cover - the package is in requirements.txt
    _CRC32C = _CRC32C_EXTEND = None

# FsServerDefaults.checksumType (DataChecksum.Type ids).
CHECKSUM_TYPES = {1: "CRC32", 2: "CRC32C"}


@dataclass(frozen=True)
class ChecksumSpec:
    """How the DataNodes checksum a file written with this block size."""

    block_size: int
    bytes_per_crc: int
    crc: str  # CRC32 or CRC32C

    def computable(self) -> str | None:
        """None if this process can compute it; else why not (the caller then reads back)."""
        if self.crc not in ("CRC32", "CRC32C"):
            return f"checksum type {self.crc} is not computed locally"
        if self.crc == "CRC32C" and _CRC32C is None:
            return "no C implementation of CRC32C (google-crc32c) in this Python"
        if self.bytes_per_crc <= 0 or self.block_size <= 0 or self.block_size % self.bytes_per_crc:
            return f"block size {self.block_size} is not a multiple of bytes-per-checksum {self.bytes_per_crc}"
        return None


class HdfsChecksummer:
    """Both HDFS file checksums of a byte stream, fed chunk by chunk (any chunk sizes)."""

    def __init__(self, spec: ChecksumSpec):
        self.spec = spec
        if spec.crc == "CRC32C":
            self._crc, self._extend = _CRC32C, _CRC32C_EXTEND
        else:
            self._crc, self._extend = zlib.crc32, lambda crc, data: zlib.crc32(data, crc)
        self._chunk = bytearray()  # the current partial chunk
        self._block_crcs = bytearray()  # CRCs of the current block's chunks
        self._block_fill = 0  # bytes of the current block
        self._block_md5s = bytearray()
        self._blocks = 0
        self._composite = 0
        self.size = 0

    def update(self, data: bytes) -> None:
        """Feed the next bytes of the file.

        Cost: one C call per ``bytes_per_crc`` chunk, in a list comprehension over each run of whole
        chunks (about 0.1 s per 64 MiB here; a byte-wise accumulator cost four times that and was
        the largest CPU item of an HDFS copy)."""
        if not data:
            return
        data = bytes(data)  # the C CRC functions take read-only bytes, not memoryviews
        self.size += len(data)
        self._composite = self._extend(self._composite, data)
        bpc, block, crc = self.spec.bytes_per_crc, self.spec.block_size, self._crc
        pos, end = 0, len(data)
        if self._chunk:  # complete the partial chunk left by the previous call
            take = min(end, bpc - len(self._chunk))
            self._chunk += data[:take]
            pos = take
            if len(self._chunk) < bpc:
                return
            self._close_chunk()
            if self._block_fill == block:
                self._close_block()
        while end - pos >= bpc:
            # Whole chunks up to the end of the data or of the current block (block sizes are
            # multiples of bpc, so a chunk never straddles a block boundary).
            count = min((end - pos) // bpc, (block - self._block_fill) // bpc)
            stop = pos + count * bpc
            crcs = [crc(data[at:at + bpc]) & 0xFFFFFFFF for at in range(pos, stop, bpc)]
            self._block_crcs += struct.pack(f">{count}I", *crcs)
            self._block_fill += count * bpc
            pos = stop
            if self._block_fill == block:
                self._close_block()
        self._chunk += data[pos:]

    def _close_chunk(self) -> None:
        self._block_crcs += struct.pack(">I", self._crc(bytes(self._chunk)) & 0xFFFFFFFF)
        self._block_fill += len(self._chunk)
        self._chunk.clear()

    def _close_block(self) -> None:
        self._block_md5s += hashlib.md5(self._block_crcs).digest()
        self._blocks += 1
        self._block_crcs.clear()
        self._block_fill = 0

    def results(self) -> dict[str, str]:
        """``{algorithm: bytes as hex}`` for the MD5MD5CRC and the COMPOSITE-CRC file checksum."""
        if self._chunk:
            self._close_chunk()
        if self._block_fill:
            self._close_block()
        spec = self.spec
        file_md5 = hashlib.md5(_as_in_hadoops_buffer(bytes(self._block_md5s))).digest()
        if self._blocks == 0:
            # An empty file has no blocks: HDFS reports MD5-of-0MD5-of-0CRC32.
            md5md5 = ("MD5-of-0MD5-of-0CRC32", struct.pack(">iq", 0, 0) + file_md5)
        else:
            per_block = spec.block_size // spec.bytes_per_crc if self._blocks > 1 else 0
            md5md5 = (f"MD5-of-{per_block}MD5-of-{spec.bytes_per_crc}{spec.crc}",
                      struct.pack(">iq", spec.bytes_per_crc, per_block) + file_md5)
        return {md5md5[0]: md5md5[1].hex(), f"COMPOSITE-{spec.crc}": struct.pack(">I", self._composite).hex()}


def _as_in_hadoops_buffer(md5s: bytes) -> bytes:
    """The block MD5s padded with zeros to the capacity a DataOutputBuffer holding them has (32, doubling)."""
    capacity = 32
    while capacity < len(md5s):
        capacity *= 2
    return md5s + bytes(capacity - len(md5s))


def matches(computed: dict[str, str], reported: dict) -> bool | None:
    """Whether the cluster's ``FileChecksum`` equals ours; None if its algorithm is not one we computed.

    Only the first ``length`` bytes count: WebHDFS appends the serialized checksum options.
    """
    expected = computed.get(reported.get("algorithm", ""))
    if expected is None:
        return None
    try:
        length = int(reported.get("length"))
    except (TypeError, ValueError):
        return False
    return expected == str(reported.get("bytes", "")).lower()[:2 * length]
