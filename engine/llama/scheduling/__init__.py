"""Scheduling in pure Python: which sequences and tokens each decode step carries, and what comes of it."""
