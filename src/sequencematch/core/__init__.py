"""The representation: sequences with ``<bkspc>``, the one-pass layout, sampling, objectives.

Imports torch and transformers only; every other layer but :mod:`sequencematch.storage`
builds on it.
"""
