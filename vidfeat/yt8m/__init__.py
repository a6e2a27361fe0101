"""YouTube-8M's released TFRecords, read and written without TensorFlow.

Layers, each usable alone:

- :mod:`~vidfeat.yt8m.tfrecord`: the record framing (length, masked CRC32C, data, CRC32C),
  with typed per-record failures;
- :mod:`~vidfeat.yt8m.protos`: ``tf.train.Example`` / ``SequenceExample`` message classes;
- :mod:`~vidfeat.yt8m.schema`: one record <-> :class:`Yt8mVideo` (frame or video level,
  segment ratings);
- :mod:`~vidfeat.yt8m.vocabulary`, :mod:`~vidfeat.yt8m.sources`: Google's class names, and
  which files PATHS name (fsspec: local or remote) with their splits;
- :mod:`~vidfeat.yt8m.reader`: whole files -> videos and failures, in worker processes.
"""

from __future__ import annotations

from vidfeat.yt8m.reader import FileResult, RecordFailure, read_file, read_files
from vidfeat.yt8m.schema import Segments, Yt8mVideo, encode_record, parse_record
from vidfeat.yt8m.sources import SourceFile, expand_paths, split_from_name, store_split
from vidfeat.yt8m.tfrecord import iter_records, read_records, write_records
from vidfeat.yt8m.vocabulary import Vocabulary, read_vocabulary

__all__ = [
    "FileResult",
    "RecordFailure",
    "Segments",
    "SourceFile",
    "Vocabulary",
    "Yt8mVideo",
    "encode_record",
    "expand_paths",
    "iter_records",
    "parse_record",
    "read_file",
    "read_files",
    "read_records",
    "read_vocabulary",
    "split_from_name",
    "store_split",
    "write_records",
]
