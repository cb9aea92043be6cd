"""Pure-NumPy references of :mod:`node.control.kernels`: same inputs, same outputs."""

from __future__ import annotations

import numpy as np


def throttle_caps(
    temp_c: np.ndarray,
    cap_min_w: float,
    cap_max_w: float,
    target_c: float,
    gain_w_per_k: float,
    out_cap_w: np.ndarray,
) -> int:
    excess = np.maximum(temp_c - target_c, 0.0)
    caps = np.clip(cap_max_w - gain_w_per_k * excess, cap_min_w, cap_max_w)
    out_cap_w[:] = np.where(np.isnan(temp_c), cap_min_w, caps)
    return int(np.count_nonzero(out_cap_w < cap_max_w))


def caps_changed(new_cap_w: np.ndarray, sent_cap_w: np.ndarray, deadband_w: float) -> bool:
    return bool(np.any(np.abs(new_cap_w - sent_cap_w) > deadband_w))
