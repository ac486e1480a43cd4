"""Tasks as plug-ins: the Task interface (:mod:`.base`), lookup by name (:mod:`.registry`,
:mod:`.names`), and three implementations: arithmetic and jsonl (a user's pairs), both scored
by exact match (:mod:`.exact_match_task`), and text (a corpus).

Imports :mod:`sequencematch.core`, :mod:`sequencematch.storage` (and
:mod:`sequencematch.evaluation` for generic metrics).
"""
