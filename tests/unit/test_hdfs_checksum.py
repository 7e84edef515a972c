"""The local HDFS file checksum does not depend on how the bytes arrive: chunks of any size, across
chunk and block boundaries (the real cluster's answer is checked in tests/integration/test_hadoop.py)."""

from __future__ import annotations

import random

import pytest

from storage.hdfs_checksum import ChecksumSpec, HdfsChecksummer


def checksum(data: bytes, spec: ChecksumSpec, pieces: list[int]) -> dict:
    summer = HdfsChecksummer(spec)
    at = 0
    for n in pieces:
        summer.update(data[at:at + n])
        at += n
    summer.update(data[at:])
    return summer.results()


@pytest.mark.parametrize("crc", ["CRC32C", "CRC32"])
def test_any_chunking_gives_the_checksum_of_one_update(crc):
    rnd = random.Random(7)
    for _ in range(40):
        spec = ChecksumSpec(block_size=rnd.choice([512, 1024, 4096]), bytes_per_crc=512, crc=crc)
        size = rnd.choice([0, 1, 511, 512, 513, spec.block_size - 1, spec.block_size, spec.block_size + 1,
                           rnd.randrange(0, 12 * spec.block_size)])
        data = rnd.randbytes(size)
        whole = checksum(data, spec, [])
        pieces = [rnd.choice([1, 7, 511, 512, 513, 1500, 9000]) for _ in range(size // 300 + 1)]
        assert checksum(data, spec, pieces) == whole, (spec, size)
        byte_by_byte = [1] * min(size, 3000)
        assert checksum(data, spec, byte_by_byte) == whole, (spec, size)


def test_blocks_change_the_md5_of_md5s_but_not_the_composite_crc():
    data = random.Random(3).randbytes(5000)
    small = checksum(data, ChecksumSpec(block_size=1024, bytes_per_crc=512, crc="CRC32C"), [])
    large = checksum(data, ChecksumSpec(block_size=8192, bytes_per_crc=512, crc="CRC32C"), [])
    assert small["COMPOSITE-CRC32C"] == large["COMPOSITE-CRC32C"]
    assert set(small) != set(large) or small != large
