"""Experiments: several adversaries (arms) over several seeds, and their comparison."""
