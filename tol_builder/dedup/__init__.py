"""Dedup against evaluation sets and within the pool (the stage itself: written by the integrator)."""
