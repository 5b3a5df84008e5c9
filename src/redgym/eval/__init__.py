"""Evaluation: metrics with bootstrap CIs and the run report."""
