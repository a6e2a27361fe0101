"""TFRecord framing against files TensorFlow wrote, and every way a file can be broken."""

from __future__ import annotations

import gzip
import io

import pytest

from tests.vidfeat.yt8m.helpers import ALL_FILES, FRAME, expected, key, record_spans
from vidfeat.errors import (
    CorruptRecordError,
    EmptyFileError,
    NotTFRecordError,
    RecordError,
    TruncatedRecordError,
)
from vidfeat.yt8m.tfrecord import encode_record, iter_records, read_records, write_records


def _items(data: bytes) -> list:
    return list(iter_records(io.BytesIO(data)))


@pytest.mark.parametrize("path", ALL_FILES, ids=key)
def test_reframing_tensorflow_files_gives_their_exact_bytes(path):
    data = path.read_bytes()
    records = read_records(io.BytesIO(data))
    assert len(records) == len(expected()[key(path)])
    out = io.BytesIO()
    assert write_records(out, records) == len(records)
    assert out.getvalue() == data


def test_crc32c_matches_the_published_check_value():
    # CRC-32C("123456789") = 0xE3069283; the framing's length field of b"123456789" is 9.
    record = encode_record(b"123456789")
    assert record[:8] == (9).to_bytes(8, "little")
    assert record[12:21] == b"123456789"
    import google_crc32c

    assert google_crc32c.value(b"123456789") == 0xE3069283


def test_data_checksum_mismatch_costs_one_record():
    data = bytearray(FRAME.read_bytes())
    start, _ = record_spans(bytes(data))[1]
    data[start + 12 + 100] ^= 0x01  # one bit inside record 1's payload
    items = _items(bytes(data))
    assert [type(x) for x in items] == [bytes, CorruptRecordError, bytes]
    assert items[1].index == 1 and items[1].offset == start
    assert items[1].status == "bad_crc"


def test_payload_checksum_field_itself_corrupt():
    data = bytearray(FRAME.read_bytes())
    _, end = record_spans(bytes(data))[0]
    data[end - 1] ^= 0xFF
    items = _items(bytes(data))
    assert isinstance(items[0], CorruptRecordError) and len(items) == 3


def test_length_checksum_mismatch_ends_the_file():
    data = bytearray(FRAME.read_bytes())
    start, _ = record_spans(bytes(data))[1]
    data[start] ^= 0x01  # the length of record 1: its checksum no longer matches
    items = _items(bytes(data))
    assert isinstance(items[0], bytes)
    assert isinstance(items[1], CorruptRecordError) and "rest of the file" in items[1].reason
    assert len(items) == 2


@pytest.mark.parametrize("cut", [5, 12 + 40, -2])
def test_truncated_file(cut):
    data = FRAME.read_bytes()
    start, end = record_spans(data)[2]
    stop = start + cut if cut > 0 else end + cut
    items = _items(data[:stop])
    assert [type(x) for x in items] == [bytes, bytes, TruncatedRecordError]
    assert items[2].index == 2 and items[2].status == "truncated"


def test_not_a_tfrecord():
    items = _items(b"video_id,labels\nabc,1\n" * 10)
    assert len(items) == 1 and isinstance(items[0], NotTFRecordError)
    assert items[0].status == "not_tfrecord"


def test_gzip_compressed_file_is_named():
    (item,) = _items(gzip.compress(FRAME.read_bytes()))
    assert isinstance(item, NotTFRecordError) and "gzip" in item.reason


def test_shorter_than_a_header():
    (item,) = _items(b"\x01\x02\x03")
    assert isinstance(item, NotTFRecordError)


def test_empty_file():
    (item,) = _items(b"")
    assert isinstance(item, EmptyFileError) and item.status == "empty"


def test_strict_reading_raises_the_first_error():
    data = FRAME.read_bytes()
    with pytest.raises(TruncatedRecordError):
        read_records(io.BytesIO(data[:-1]))
    with pytest.raises(RecordError):
        read_records(io.BytesIO(b""))


def test_empty_and_large_payloads_round_trip():
    payloads = [b"", b"x", bytes(range(256)) * 300]
    out = io.BytesIO()
    write_records(out, payloads)
    assert read_records(io.BytesIO(out.getvalue())) == payloads
