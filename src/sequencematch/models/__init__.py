"""Models: presets, loading, adding ``<bkspc>``. Imports :mod:`sequencematch.core` only."""
