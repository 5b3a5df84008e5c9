"""redgym: learned red-teaming of language models."""

__version__ = "0.1.0"
