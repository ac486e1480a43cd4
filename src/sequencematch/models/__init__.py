"""Models: presets, loading, adding ``<bkspc>``. Imports :mod:`sequencematch.core`
and :mod:`sequencematch.storage` only."""
