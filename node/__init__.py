"""Umbra's onboard controller."""

__version__ = "0.1.0"
