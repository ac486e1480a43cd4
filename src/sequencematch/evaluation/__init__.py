"""Evaluation: statistics, perplexity, text metrics. Imports core and models only."""
