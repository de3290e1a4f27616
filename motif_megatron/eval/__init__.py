"""Evaluation: perplexity on held-out text, token ratio, and lm-eval tasks."""
