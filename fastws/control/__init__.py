"""The shared-memory control plane: flags, per-worker counters, and the layout they live in."""

from .flags import Flags, v2_enabled_for
from .layout import ControlPlane, WorkerStats, LATENCY_BUCKETS

__all__ = ["ControlPlane", "Flags", "WorkerStats", "LATENCY_BUCKETS", "v2_enabled_for"]
