"""Evaluation: perplexity, agreement, size, report."""
