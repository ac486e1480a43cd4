"""Tasks as plug-ins: the Task interface (:mod:`.base`), lookup by name (:mod:`.registry`),
and three implementations: arithmetic, jsonl (a user's pairs) and text (a corpus).

Imports :mod:`sequencematch.core`, :mod:`sequencematch.storage` (and
:mod:`sequencematch.evaluation` for generic metrics).
"""
