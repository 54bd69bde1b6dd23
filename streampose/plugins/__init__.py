"""Plugins: per-person logic (fall detection, repetition counting, your own)."""
