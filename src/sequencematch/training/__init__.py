"""Training: configuration, the loop, replay buffer, batches, checkpoints, distributed.

Imports :mod:`sequencematch.core` and :mod:`sequencematch.models`.
"""
