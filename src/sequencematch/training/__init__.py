"""Training: configuration, the loop, replay buffer, batches, checkpoints, distributed.

Imports :mod:`sequencematch.core`, :mod:`sequencematch.models` and :mod:`sequencematch.storage`.
"""
