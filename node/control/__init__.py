"""Numba control kernels and their NumPy references."""
