"""Test configuration: several CPU devices (for sharding/batching tests) and the shared op checker."""

from __future__ import annotations

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
