"""Control kernels agree with their NumPy references and do what their names say."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from node.control import kernels, reference

pytestmark = pytest.mark.kernels

temps = arrays(
    np.float64,
    st.integers(1, 64),
    elements=st.one_of(st.floats(-50, 200), st.just(float("nan"))),
)


@settings(max_examples=200, deadline=None)
@given(
    temp_c=temps,
    cap_min=st.floats(50, 300),
    span=st.floats(0, 600),
    target=st.floats(40, 95),
    gain=st.floats(0, 200),
)
def test_throttle_matches_reference(temp_c, cap_min, span, target, gain):
    cap_max = cap_min + span
    fast, ref = np.zeros_like(temp_c), np.zeros_like(temp_c)
    n_fast = kernels.throttle_caps(temp_c, cap_min, cap_max, target, gain, fast)
    n_ref = reference.throttle_caps(temp_c, cap_min, cap_max, target, gain, ref)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)
    assert n_fast == n_ref
    assert np.all((fast >= cap_min) & (fast <= cap_max))


def test_throttle_examples():
    caps = np.zeros(4)
    n = kernels.throttle_caps(np.array([50.0, 85.0, np.nan, 200.0]), 200.0, 700.0, 80.0, 40.0, caps)
    # below target: full cap; 5 K above: 200 W less; unknown: minimum; far above: clamped.
    assert caps.tolist() == [700.0, 500.0, 200.0, 200.0]
    assert n == 3


@settings(max_examples=200, deadline=None)
@given(
    a=arrays(np.float64, 8, elements=st.floats(0, 1000)),
    b=arrays(np.float64, 8, elements=st.floats(0, 1000)),
    deadband=st.floats(0, 50),
)
def test_caps_changed_matches_reference(a, b, deadband):
    assert kernels.caps_changed(a, b, deadband) == reference.caps_changed(a, b, deadband)


def test_caps_changed_deadband():
    sent = np.array([700.0, 500.0])
    assert not kernels.caps_changed(np.array([704.0, 496.0]), sent, 5.0)
    assert kernels.caps_changed(np.array([700.0, 494.0]), sent, 5.0)
