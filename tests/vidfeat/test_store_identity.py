"""What makes two runs "the same settings" for a store: rates compare as rates, NaN is refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vidfeat.config import ExtractConfig
from vidfeat.errors import ConfigError, StoreMismatchError
from vidfeat.pipeline import resume_attrs
from vidfeat.store import create_store

FORMATS = ["zarr", "hdf5"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_rate_spelled_three_ways_is_one_store(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"s.{'zarr' if fmt == 'zarr' else 'h5'}"
    with create_store(path, dim=2, format=fmt, attrs={"fps": "1.0"}) as w:
        w.write("a", np.ones((1, 2), np.float32))
    for spelling in ("1", "1/1", "1.00"):
        with create_store(path, dim=2, format=fmt, attrs={"fps": spelling}) as w:
            assert w.committed_ids() == {"a"}
    with pytest.raises(
        StoreMismatchError, match=re.escape("fps: store has '1', this run has '0.5'")
    ):
        create_store(path, dim=2, format=fmt, attrs={"fps": "1/2"})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_attrs_are_refused_before_anything_is_written(tmp_path, fmt, bad) -> None:
    path = tmp_path / f"s.{'zarr' if fmt == 'zarr' else 'h5'}"
    with pytest.raises(ConfigError, match="without NaN or infinity"):
        create_store(path, dim=2, format=fmt, attrs={"backbone": {"mean": [bad, 0.5]}})
    assert not path.exists()


def test_config_spells_each_rate_one_way_and_refuses_nan() -> None:
    rates = {ExtractConfig("m.csv", "s.zarr", fps=f).fps for f in ("1", "1.0", "1/1", " 1 ")}
    assert rates == {"1"}
    assert ExtractConfig("m.csv", "s.zarr", fps="30000/1001").fps == "30000/1001"
    assert ExtractConfig("m.csv", "s.zarr", fps="1/2").fps == "0.5"
    for bad in ("nan", "inf", "0", "-1"):
        with pytest.raises(ConfigError, match="fps must be a number > 0"):
            ExtractConfig("m.csv", "s.zarr", fps=bad)
    with pytest.raises(ConfigError, match="timeout"):
        ExtractConfig("m.csv", "s.zarr", timeout_s=float("nan"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_stores_from_before_the_decoder_attr_resume_with_the_same_decoder(tmp_path, fmt) -> None:
    path = tmp_path / f"s.{'zarr' if fmt == 'zarr' else 'h5'}"
    with create_store(path, dim=2, format=fmt, attrs={"fps": "1"}) as w:
        w.write("a", np.ones((1, 2), np.float32), decoder="decord")
    attrs = {"fps": "1", "decoder": "decord"}
    same = ExtractConfig("m.csv", path, format=fmt, decoder="decord")
    assert resume_attrs(same, attrs) == {"fps": "1"}
    with create_store(path, dim=2, format=fmt, attrs=resume_attrs(same, attrs)) as w:
        assert w.committed_ids() == {"a"}
    # Another decoder would mix features: the recorded attr makes create_store refuse it.
    other = ExtractConfig("m.csv", path, format=fmt, decoder="pyav")
    assert resume_attrs(other, {**attrs, "decoder": "pyav"}) == {**attrs, "decoder": "pyav"}
    with pytest.raises(StoreMismatchError, match="decoder"):
        create_store(
            path, dim=2, format=fmt, attrs=resume_attrs(other, attrs | {"decoder": "pyav"})
        )
    # A new store, or one that records its decoder, keeps the attr as given.
    assert resume_attrs(ExtractConfig("m.csv", tmp_path / "new.zarr"), attrs) == attrs


@pytest.mark.parametrize("fmt", FORMATS)
def test_root_attrs_are_read_without_the_index_and_absent_stores_give_none(
    tmp_path: Path, fmt: str
) -> None:
    from vidfeat.store import read_store_attrs

    path = tmp_path / f"s.{'zarr' if fmt == 'zarr' else 'h5'}"
    assert read_store_attrs(path) is None
    (tmp_path / "plain").mkdir()
    assert read_store_attrs(tmp_path / "plain") is None  # a folder that is not a store
    with create_store(path, dim=2, format=fmt, attrs={"fps": "1", "precision": "mixed"}) as w:
        w.write("a", np.ones((1, 2), np.float32))
    attrs = read_store_attrs(path)
    assert attrs is not None and (attrs["fps"], attrs["precision"]) == ("1", "mixed")
