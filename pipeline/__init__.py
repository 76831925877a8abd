"""Vigil's runtime: camera readers, batched detection, tracking, rules and Redis alerts."""

__version__ = "0.1.0"
