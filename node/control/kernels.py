"""Control kernels: pure ``@njit(cache=True)`` functions over numpy arrays and numbers.

No objects, logging, I/O or allocation here: callers pass output arrays in.  Every kernel
has a pure-NumPy twin in :mod:`node.control.reference`; tests check that they agree and
``make bench`` reports the ratio.  Run with ``NUMBA_DISABLE_JIT=1`` to step through them
as plain Python.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def throttle_caps(
    temp_c: np.ndarray,
    cap_min_w: float,
    cap_max_w: float,
    target_c: float,
    gain_w_per_k: float,
    out_cap_w: np.ndarray,
) -> int:
    """Proportional thermal throttle: each GPU's cap falls ``gain`` W per K above target.

    A GPU whose reading is NaN gets the minimum cap: without a temperature we assume the
    worst (the estimator of a later revision replaces the reading instead).
    Returns how many GPUs are throttled below the maximum cap.
    """
    throttled = 0
    for i in range(temp_c.shape[0]):
        t = temp_c[i]
        if math.isnan(t):
            cap = cap_min_w
        else:
            excess = t - target_c
            cap = cap_max_w - gain_w_per_k * excess if excess > 0.0 else cap_max_w
            cap = min(max(cap, cap_min_w), cap_max_w)
        out_cap_w[i] = cap
        if cap < cap_max_w:
            throttled += 1
    return throttled


@njit(cache=True)
def caps_changed(new_cap_w: np.ndarray, sent_cap_w: np.ndarray, deadband_w: float) -> bool:
    """True when any cap moved more than the deadband from what the board last accepted."""
    for i in range(new_cap_w.shape[0]):
        if abs(new_cap_w[i] - sent_cap_w[i]) > deadband_w:
            return True
    return False
