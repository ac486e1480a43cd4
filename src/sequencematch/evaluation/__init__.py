"""Evaluation: statistics, perplexity, text metrics. Imports core, models and storage
only."""
