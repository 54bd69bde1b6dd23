"""streampose: a real-time, multi-stream human-pose video daemon."""

__version__ = "0.1.0"
