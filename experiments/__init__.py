"""Reproduction experiments (run by hand, not by CI)."""
