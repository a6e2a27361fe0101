"""Batch staging and features in flight: the code the CUDA path runs, exercised on the CPU
(where buffers are not page-locked and no events are recorded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidfeat.staging import BatchStaging, FeaturesInFlight


def frames(n: int, value: float, size: int = 4) -> np.ndarray:
    return np.full((n, size, size, 3), value, np.float32)


def test_fill_places_the_parts_in_order_in_two_alternating_reused_buffers():
    staging = BatchStaging(batch_size=5, input_size=4, device=torch.device("cpu"))
    first = staging.fill([frames(2, 1.0), frames(3, 2.0)])
    assert first.shape == (5, 4, 4, 3)
    assert first[:2].eq(1.0).all() and first[2:].eq(2.0).all()
    staging.launched()
    second = staging.fill([frames(1, 3.0)])
    staging.launched()
    assert second.shape == (1, 4, 4, 3) and second.eq(3.0).all()
    assert second.data_ptr() != first.data_ptr()  # the first may still be in flight
    third = staging.fill([frames(4, 4.0)])
    assert third.data_ptr() == first.data_ptr()  # no allocation per batch
    assert third.eq(4.0).all() and len(third) == 4
    assert second.eq(3.0).all()  # untouched while the first buffer was refilled


def test_a_batch_larger_than_the_buffers_is_refused():
    staging = BatchStaging(batch_size=2, input_size=4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="3 frames do not fit"):
        staging.fill([frames(2, 0.0), frames(1, 0.0)])


def test_features_in_flight_on_the_cpu_are_the_features_as_float32():
    owners = [("a", 1), ("b", 2)]
    features = torch.arange(6, dtype=torch.float16).view(3, 2)
    in_flight = FeaturesInFlight.start(features, owners)
    assert in_flight.owners == owners and in_flight.event is None
    got = in_flight.ready()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, features.float().numpy())
