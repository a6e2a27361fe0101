"""TFRecord framing: read and write the record stream TensorFlow's RecordWriter produces.

Each record is::

    uint64 length                  little-endian
    uint32 masked_crc32c(length)   of the 8 length bytes
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), and records simply
follow one another. This module reads the uncompressed stream (YouTube-8M publishes
that); :mod:`vidfeat.yt8m.reader` unwraps GZIP-compressed files first.

Reading returns per-record failures as values, so one bad record costs one video, not the file:
a data checksum mismatch skips that record and goes on (its length was vouched for by the header
checksum), while a bad header or a short read ends the file (the next record's start is unknown).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import google_crc32c

from vidfeat.errors import (
    CorruptRecordError,
    EmptyFileError,
    NotTFRecordError,
    RecordError,
    TruncatedRecordError,
)

_HEADER = struct.Struct("<QI")  # length, masked crc of the length bytes
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
# Reads are chunked so that a corrupt-but-checksummed length cannot make us allocate terabytes.
_READ_CHUNK = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"  # files written with TensorFlow's GZIP option


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C of ``data`` (a uint32)."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One framed record: header, data and footer."""
    length = _LENGTH.pack(len(data))
    return length + _CRC.pack(masked_crc32c(length)) + bytes(data) + _CRC.pack(masked_crc32c(data))


def write_records(stream: BinaryIO, records: Iterable[bytes]) -> int:
    """Append framed ``records`` to a binary stream; returns how many were written."""
    n = 0
    for data in records:
        stream.write(encode_record(data))
        n += 1
    return n


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at end of file), read in bounded chunks."""
    if n <= _READ_CHUNK:
        return stream.read(n)
    parts, got = [], 0
    while got < n:
        part = stream.read(min(_READ_CHUNK, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def is_record_header(header: bytes) -> bool:
    """Whether 12 bytes are a valid record header (a length and its masked CRC32C)."""
    if len(header) < _HEADER.size:
        return False
    _, length_crc = _HEADER.unpack(header[: _HEADER.size])
    return masked_crc32c(header[:8]) == length_crc


def is_gzip(head: bytes) -> bool:
    """Whether a file starting with ``head`` (12+ bytes) is a GZIP-compressed TFRecord file.

    The gzip magic alone could be the low bytes of a record length, so a valid record header
    wins.
    """
    return head.startswith(GZIP_MAGIC) and not is_record_header(head)


def _bad_start(header: bytes) -> NotTFRecordError:
    hint = " (gzip-compressed)" if header.startswith(GZIP_MAGIC) else ""
    return NotTFRecordError(f"not a TFRecord file: the first record header is invalid{hint}")


def iter_records(stream: BinaryIO) -> Iterator[bytes | RecordError]:
    """Yield each record's data, or a :class:`RecordError` for a record that cannot be read.

    After a fatal error (empty file, not a TFRecord, truncation, bad header checksum) iteration
    stops; after a data checksum mismatch it continues with the next record.
    """
    index, offset = 0, 0
    while True:
        header = _read_exact(stream, _HEADER.size)
        if not header:
            if index == 0:
                yield EmptyFileError("empty file: no records")
            return
        if len(header) < _HEADER.size:
            if index == 0:
                yield _bad_start(header)
            else:
                yield TruncatedRecordError(
                    f"file ends inside the header of record {index} (byte {offset})",
                    index=index,
                    offset=offset,
                )
            return
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            if index == 0:
                yield _bad_start(header)
            else:
                yield CorruptRecordError(
                    f"length checksum mismatch in record {index} (byte {offset}); "
                    "the rest of the file cannot be located",
                    index=index,
                    offset=offset,
                    ends_file=True,
                )
            return
        body = _read_exact(stream, length + _CRC.size)
        if len(body) < length + _CRC.size:
            yield TruncatedRecordError(
                f"file ends inside record {index} (byte {offset}): "
                f"{len(body)} of {length + _CRC.size} bytes after the header",
                index=index,
                offset=offset,
            )
            return
        data = body[:length]
        (data_crc,) = _CRC.unpack(body[length:])
        if masked_crc32c(data) != data_crc:
            yield CorruptRecordError(
                f"data checksum mismatch in record {index} (byte {offset})",
                index=index,
                offset=offset,
            )
        else:
            yield data
        index += 1
        offset += _HEADER.size + length + _CRC.size


def read_records(stream: BinaryIO) -> list[bytes]:
    """Every record's data; raises the first :class:`RecordError` (strict reading)."""
    out = []
    for item in iter_records(stream):
        if isinstance(item, RecordError):
            raise item
        out.append(item)
    return out
