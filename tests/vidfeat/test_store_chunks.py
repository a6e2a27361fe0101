"""The direct chunk reader of local schema-2 Zarr parts agrees with zarr, byte for byte."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from vidfeat import create_store
from vidfeat.errors import StoreIntegrityError
from vidfeat.store import open_store
from vidfeat.store.chunks import ChunkCache, fast_chunks

RNG = np.random.default_rng(7)
# Lengths chosen so that videos start mid-chunk, end on a chunk boundary and span three chunks
# (uint8-1024 chunks hold 256 rows, float32-2048 chunks 128).
LENGTHS = [3, 253, 256, 600, 1, 130, 41]


def _store(tmp_path: Path, dtype: str, dim: int) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / f"{dtype}.zarr"
    q = {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0} if dtype == "uint8" else None
    spec = {"dim": dim, "dtype": dtype, "quantization": q}
    written = {}
    with create_store(path, streams={"rgb": spec}) as writer:
        for i, n in enumerate(LENGTHS):
            if dtype == "uint8":
                x = RNG.integers(0, 256, size=(n, dim), dtype=np.uint8)
            else:
                x = RNG.normal(size=(n, dim)).astype(dtype)
            writer.write(f"v{i}", {"rgb": x}, labels=("a",))
            written[f"v{i}"] = x
    return path, written


@pytest.mark.parametrize(("dtype", "dim"), [("uint8", 1024), ("float32", 2048), ("float16", 24)])
def test_direct_reads_equal_zarr_reads_and_what_was_written(tmp_path, dtype, dim):
    path, written = _store(tmp_path, dtype, dim)
    with open_store(path) as reader:
        part = reader._parts[0]
        arr = part._array("streams/rgb/features")
        assert part._fast_reader("streams/rgb/features") is not None  # the direct path is used
        for vid, x in written.items():
            raw = reader.read(vid, raw=True)
            _, offset, n, _ = reader._locate(vid)
            np.testing.assert_array_equal(raw, x)
            np.testing.assert_array_equal(raw, np.asarray(arr[offset : offset + n]))
            assert raw.dtype == np.dtype(dtype)


def test_reads_do_not_depend_on_the_cache_size(tmp_path):
    path, written = _store(tmp_path, "uint8", 1024)
    order = list(written)[::-1] + list(written)
    with open_store(path, cache_mb=0) as cold, open_store(path, cache_mb=64) as warm:
        for vid in order:
            np.testing.assert_array_equal(cold.read(vid), warm.read(vid))
        assert warm._parts[0]._cache.bytes > 0
        assert cold._parts[0]._cache.bytes == 0


def test_a_caller_writing_into_a_read_does_not_change_later_reads(tmp_path):
    path, written = _store(tmp_path, "float32", 2048)
    with open_store(path) as reader:
        first = reader.read("v1")  # inside one chunk: served from the cached chunk
        first[:] = 99.0
        np.testing.assert_array_equal(reader.read("v1"), written["v1"])


def test_cache_keeps_most_recent_chunks_within_its_bound():
    cache = ChunkCache(3000)
    for i in range(5):
        cache.put(("a", i), np.zeros(1000, np.uint8))
        assert cache.bytes <= 3000
    assert cache.get(("a", 0)) is None and cache.get(("a", 1)) is None
    assert cache.get(("a", 2)) is not None
    cache.put(("a", 5), np.zeros(1000, np.uint8))  # 2 was used last: 3 goes first
    assert cache.get(("a", 3)) is None and cache.get(("a", 2)) is not None
    cache.put(("big",), np.zeros(4000, np.uint8))  # larger than the whole cache: not kept
    assert cache.get(("big",)) is None and cache.bytes <= 3000


def _chunk_file(path: Path, index: int) -> Path:
    return path / "parts" / "main" / "streams" / "rgb" / "features" / "c" / str(index) / "0"


def test_a_flipped_byte_is_caught_by_the_direct_path(tmp_path):
    path, _ = _store(tmp_path, "uint8", 1024)
    chunk = _chunk_file(path, 1)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with open_store(path) as reader:
        reader.read("v0")  # rows 0:3 and 3:256 lie in chunk 0, which is intact
        reader.read("v1")
        with pytest.raises(StoreIntegrityError, match=r"v2.*c/1/0 fails its CRC32C"):
            reader.read("v2")  # rows 256:512, chunk 1
        out = np.empty((256, 1024), np.float32)
        reader.read_into("v1", out[:253], ["rgb"])
        assert out[:253].tobytes() == reader.read("v1").tobytes()
        with pytest.raises(StoreIntegrityError, match=r"v2.*c/1/0 fails its CRC32C"):
            reader.read_into("v2", out, ["rgb"])  # the batch read path checks alike
        with pytest.raises(StoreIntegrityError, match=r"v2.*c/1/0 fails its CRC32C"):
            reader.read_into("v2", out[:2], ["rgb"], frames=np.array([0, 255]))


def test_a_missing_chunk_names_the_chunk_and_the_video(tmp_path):
    path, _ = _store(tmp_path, "uint8", 1024)
    _chunk_file(path, 2).unlink()
    with open_store(path) as reader, pytest.raises(StoreIntegrityError, match=r"c/2/0.*missing"):
        reader.read("v3")


def test_other_encodings_keep_zarrs_read_path(tmp_path):
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(10, 4), chunks=(5, 4), dtype="f4")
    assert fast_chunks(plain, ChunkCache(0), ("x",)) is None  # default codecs: no CRC32C
    split = zarr.create_array(tmp_path / "cols.zarr", shape=(10, 4), chunks=(5, 2), dtype="f4")
    assert fast_chunks(split, ChunkCache(0), ("x",)) is None  # chunked along columns


def test_float_frames_are_written_at_zstd_level_minus_1_and_either_level_reads(tmp_path):
    from vidfeat.store._zarr import CHECKSUMMED_CODECS

    path, _ = _store(tmp_path, "float32", 2048)
    group = zarr.open_group(path / "parts" / "main", mode="r")
    levels = {
        name: group[name].metadata.codecs[1].level
        for name in ("streams/rgb/features", "streams/rgb/mean", "timestamps_s")
    }
    assert levels == {"streams/rgb/features": -1, "streams/rgb/mean": 0, "timestamps_s": 0}
    # An array written at the default level, as stores before this choice were.
    x = RNG.normal(size=(300, 2048)).astype(np.float32)
    old = zarr.create_array(
        tmp_path / "old.zarr",
        shape=x.shape,
        chunks=(128, 2048),
        dtype="float32",
        compressors=CHECKSUMMED_CODECS,
    )
    old[:] = x
    fast = fast_chunks(old, ChunkCache(1 << 24), ("old",))
    assert fast is not None
    np.testing.assert_array_equal(fast.rows(5, 290), x[5:290])


def test_the_cache_counts_each_chunk_once_and_serves_threads(tmp_path) -> None:
    # A chunk put twice was counted twice (the cache then dropped every new chunk at once),
    # and threads sharing a reader broke its order ("dictionary is empty").
    cache = ChunkCache(100)
    cache.put(("a",), np.zeros(10, np.int64))
    cache.put(("a",), np.zeros(10, np.int64))
    assert cache.bytes == 80
    rng = np.random.default_rng(0)
    with create_store(tmp_path / "s.zarr", dim=8) as w:
        for i in range(60):
            w.write(f"v{i}", rng.standard_normal((20, 8)).astype(np.float32))
    with open_store(tmp_path / "s.zarr", cache_mb=0.02) as reader:
        expected = {f"v{i}": reader.read(f"v{i}") for i in range(60)}
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(reader.read, [f"v{i % 60}" for i in range(3000)]))
        for i, features in enumerate(got):
            np.testing.assert_array_equal(features, expected[f"v{i % 60}"])
        cache = reader._parts[0]._cache  # the one cache its parts share
        assert cache.bytes == sum(v.nbytes for v in cache._items.values()) <= cache.max_bytes
