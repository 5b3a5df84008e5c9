"""Guard: a reasoning safety classifier that writes a short reasoning trace, then ``Label: harmful|safe``."""
