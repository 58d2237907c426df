"""Lockstep inside agent frameworks (each one an optional dependency)."""
