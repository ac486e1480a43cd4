"""The four methods a comparison trains and the pairs of them it compares."""

from __future__ import annotations

MLE, MLE_BKSPC = "mle", "mle-bkspc"
OFFLINE, ONLINE = "offline-chi2-bkspc", "sequencematch-chi2-bkspc"
COMPARED_METHODS = (MLE, MLE_BKSPC, OFFLINE, ONLINE)
QUEUE_ORDER = (ONLINE, OFFLINE, MLE_BKSPC, MLE)  # the longest first: a shorter tail at the end
COMPARISONS = ((MLE, MLE_BKSPC), (MLE, OFFLINE), (MLE, ONLINE), (OFFLINE, ONLINE))
"""``(a, b)``: ``b`` is compared with ``a`` (differences are ``b`` minus ``a``): each method
against MLE, and what the model's own samples add to the offline objective."""
WARMUP = "warmup"
"""The shared MLE warm-up every method of a seed continues from."""
